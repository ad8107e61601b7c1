"""What every ``slmops export`` command shares: the --name/--out options, copying the files out, and the result printout.

Used by :mod:`slmops.cli.export` (GGUF, Ollama) and :mod:`slmops.cli.export_onnx` (ONNX, Foundry Local).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any

import typer

from slmops.cli.common import open_cli_store
from slmops.cli.models import print_result, result_dict
from slmops.cli.render import emit, out, progress_bars
from slmops.stage.runner import RunResult, run_stage
from slmops.store.artifact import MANIFEST, Artifact

NameOpt = Annotated[str | None, typer.Option("--name", "-n", help="Registry name for the export (a new version each time).")]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Also copy the exported files into this folder.")]


def copy_out(art: Artifact, dest: Path | None, *, folders: bool = False) -> str | None:
    """Copy an artifact's files (not its manifest; with ``folders`` its sub-folders too) into ``dest``; return the folder."""
    if dest is None:
        return None
    dest = dest.expanduser().resolve()
    dest.mkdir(parents=True, exist_ok=True)
    for item in sorted(art.path.iterdir()):
        if item.name == MANIFEST:
            continue
        if item.is_dir():
            if folders:
                shutil.copytree(item, dest / item.name, dirs_exist_ok=True)
        else:
            shutil.copy2(item, dest / item.name)
    return str(dest)


def package(ref: str, adapter: str | None, *, kind: str, export: tuple[str, dict[str, Any]], stage: str, role: str,
            cfg: dict[str, Any], name: str | None, as_json: bool) -> RunResult:
    """Run the packaging ``stage`` on the ``kind`` export ``ref`` names, or on ``ref``'s model (with ``adapter``) exported first.

    ``export`` is the (stage, config) that makes the export (``export.gguf`` for Ollama, ``export.onnx`` for Foundry Local).
    """
    from slmops.errors import ConfigError
    from slmops.pipeline.inputs import resolve_input

    with open_cli_store() as store, progress_bars(not as_json):
        art = resolve_input(ref, store, kind=(kind, "model"))
        if art.kind == "model":
            inputs = {"model": art, **({"adapter": resolve_input(adapter, store, kind="adapter")} if adapter else {})}
            art = run_stage(export[0], inputs, export[1], store=store).artifact
        elif adapter:
            label = kind.upper()
            raise ConfigError(f"--adapter goes with a model, not with a {label} export",
                              fix=f"pass the model (it is exported with the adapter), or export the {label} model with --adapter first")
        return run_stage(stage, {role: art}, cfg, store=store, output_name=name)


def emit_export(r: RunResult, name: str | None, as_json: bool, out_dir: str | None, extra: dict[str, Any] | None = None) -> None:
    """Print an export's result (tensor types, K-quant fallbacks, where it was copied, hints) or its JSON."""
    d = {**result_dict(r, name), "out": out_dir, **(extra or {})}

    def human(d: dict[str, Any]) -> None:
        print_result(d)
        m = d["meta"]
        if m.get("tensor_types"):
            bits = m.get("type_bits") or {}
            out.print("  tensor types: " + ", ".join(f"{k}×{v}" + (f" ({bits[k]:g} bpw)" if k in bits else "") for k, v in m["tensor_types"].items()))
        if m.get("fallbacks"):
            from slmops.export.gguf_quantize import fallback_line

            out.print(f"  K-quant fallbacks: {fallback_line(m)}")
        if out_dir:
            out.print(f"  copied to {out_dir}")
        for line in d.get("hints", []):
            out.print(f"  {line}")

    emit(d, as_json, human)
