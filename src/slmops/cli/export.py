"""``slmops export``: GGUF for llama.cpp, Ollama packages, GGUF LoRA adapters (and ONNX, in its own section).

Each command resolves its inputs, runs the export stage through the cached runner (so an export
is an artifact with lineage, made once) and, with ``--out DIR``, copies the files to a folder of
the user's choice. Sections: GGUF (``gguf``, ``gguf-lora``, ``ollama``) below; ONNX commands
(``onnx``, ``foundry``) are added to the same ``app`` in the ONNX section at the end.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any

import typer

from slmops.cli.common import JsonOpt, open_cli_store
from slmops.cli.models import print_result, result_dict
from slmops.cli.render import emit, out, progress_bars, warn
from slmops.errors import ConfigError
from slmops.stage.inputs import resolve_input
from slmops.stage.runner import RunResult, run_stage
from slmops.store.artifact import MANIFEST, Artifact

app = typer.Typer(help="Export models: GGUF for llama.cpp and Ollama, ONNX for ONNX Runtime GenAI and Foundry Local.", no_args_is_help=True)
Opt = typer.Option
NameOpt = Annotated[str | None, Opt("--name", "-n", help="Registry name for the export (a new version each time).")]
OutOpt = Annotated[Path | None, Opt("--out", "-o", help="Also copy the exported files into this folder.")]


def copy_out(art: Artifact, dest: Path | None) -> str | None:
    """Copy an artifact's files (not its manifest) into ``dest``; return the folder."""
    if dest is None:
        return None
    dest = dest.expanduser().resolve()
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(art.path.iterdir()):
        if f.is_file() and f.name != MANIFEST:
            shutil.copy2(f, dest / f.name)
    return str(dest)


def _emit(r: RunResult, name: str | None, as_json: bool, out_dir: str | None, extra: dict[str, Any] | None = None) -> None:
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


# --------------------------------------------------------------------------- GGUF


def _gguf_inputs(store: Any, model: str, adapter: str | None, imatrix_data: str | None) -> dict[str, Artifact]:
    inputs = {"model": resolve_input(model, store, kind="model")}
    if adapter:
        inputs["adapter"] = resolve_input(adapter, store, kind="adapter")
    if imatrix_data:
        inputs["data"] = resolve_input(imatrix_data, store, kind="dataset")
    return inputs


def _gguf_config(qtype: str, merge_adapter: bool, allow_other_base: bool, pre_tokenizer: str | None, drop_extra_tokens: bool,
                 gguf_name: str | None) -> dict[str, Any]:
    from slmops.export.gguf_quantize import check_qtype

    cfg: dict[str, Any] = {"qtype": check_qtype(qtype)}
    for key, value in (("merge_adapter", merge_adapter), ("allow_other_base", allow_other_base), ("drop_extra_tokens", drop_extra_tokens)):
        if value:
            cfg[key] = True
    if pre_tokenizer:
        cfg["pre_tokenizer"] = pre_tokenizer
    if gguf_name:
        cfg["name"] = gguf_name
    return cfg


QtypeOpt = Annotated[str, Opt("--qtype", "-q", help="f32, f16, bf16, q8_0, q6_k, q5_k_m, q5_k_s, q5_0, q4_k_m, q4_k_s, q4_0, q3_k_m or q2_k.")]
AdapterOpt = Annotated[str | None, Opt("--adapter", help="A LoRA adapter of MODEL: written as a GGUF LoRA applied at run time.")]
MergeOpt = Annotated[bool, Opt("--merge-adapter", help="Merge --adapter into the weights instead of a separate GGUF LoRA.")]
OtherBaseOpt = Annotated[bool, Opt("--allow-other-base", help="Accept an adapter trained on a different base artifact.")]
ImatrixOpt = Annotated[str | None, Opt("--imatrix-data", help="Dataset (ref or file) to compute an importance matrix on (quantized types).")]
PreOpt = Annotated[str | None, Opt("--pre-tokenizer", help="Force llama.cpp's pre-tokenizer name (default: detected).")]
DropOpt = Annotated[bool, Opt("--drop-extra-tokens", help="Leave out tokenizer tokens that have no embedding row instead of failing.")]
GgufNameOpt = Annotated[str | None, Opt("--gguf-name", help="general.name written into the file.")]


@app.command("gguf")
def gguf(
    model: Annotated[str, typer.Argument(help="The model: name, name:3, name@alias, sha256:…, ./hf-folder or hf:org/name.")],
    qtype: QtypeOpt = "q4_k_m",
    adapter: AdapterOpt = None,
    merge_adapter: MergeOpt = False,
    allow_other_base: OtherBaseOpt = False,
    imatrix_data: ImatrixOpt = None,
    pre_tokenizer: PreOpt = None,
    drop_extra_tokens: DropOpt = False,
    gguf_name: GgufNameOpt = None,
    name: NameOpt = None,
    out_dir: OutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Convert a llama/qwen2/phi3 (or mistral) model to GGUF, quantized by llama.cpp itself."""
    cfg = _gguf_config(qtype, merge_adapter, allow_other_base, pre_tokenizer, drop_extra_tokens, gguf_name)
    with open_cli_store() as store, progress_bars(not as_json):
        r = run_stage("export.gguf", _gguf_inputs(store, model, adapter, imatrix_data), cfg, store=store, output_name=name)
    _emit(r, name, as_json, copy_out(r.artifact, out_dir))


@app.command("gguf-lora")
def gguf_lora(
    adapter: Annotated[str, typer.Argument(help="The PEFT LoRA adapter to convert.")],
    model: Annotated[str, Opt("--model", "-m", help="Its base model (needed for the architecture and tensor layout).")],
    allow_other_base: OtherBaseOpt = False,
    name: NameOpt = None,
    out_dir: OutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Convert a LoRA adapter alone to a GGUF LoRA (for a base GGUF you already have)."""
    cfg = {"allow_other_base": True} if allow_other_base else {}
    with open_cli_store() as store, progress_bars(not as_json):
        inputs = {"adapter": resolve_input(adapter, store, kind="adapter"), "model": resolve_input(model, store, kind="model")}
        r = run_stage("export.gguf_lora", inputs, cfg, store=store, output_name=name)
    _emit(r, name, as_json, copy_out(r.artifact, out_dir))


def _parse_params(items: list[str] | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param {item!r} is not KEY=VALUE", fix="write e.g. --param temperature=0.7")
        try:
            params[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            params[key.strip()] = value
    return params


@app.command("ollama")
def ollama(
    model: Annotated[str, typer.Argument(help="A GGUF export, or a model to export first (with --qtype and --adapter).")],
    qtype: QtypeOpt = "q4_k_m",
    adapter: AdapterOpt = None,
    merge_adapter: MergeOpt = False,
    allow_other_base: OtherBaseOpt = False,
    system: Annotated[str | None, Opt("--system", help="Default system prompt (SYSTEM line).")] = None,
    num_ctx: Annotated[int | None, Opt("--num-ctx", help="Context window for Ollama (PARAMETER num_ctx).")] = None,
    param: Annotated[list[str] | None, Opt("--param", help="Extra PARAMETER line as KEY=VALUE (repeatable).")] = None,
    name: NameOpt = None,
    out_dir: OutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write an Ollama package: the GGUF (and LoRA) next to a Modelfile with TEMPLATE, stops and ADAPTER lines."""
    cfg: dict[str, Any] = {"parameters": _parse_params(param)}
    if system:
        cfg["system"] = system
    if num_ctx:
        cfg["num_ctx"] = num_ctx
    with open_cli_store() as store, progress_bars(not as_json):
        art = resolve_input(model, store, kind=("gguf", "model"))
        if art.kind == "model":
            gcfg = _gguf_config(qtype, merge_adapter, allow_other_base, None, False, None)
            inputs = {"model": art, **({"adapter": resolve_input(adapter, store, kind="adapter")} if adapter else {})}
            art = run_stage("export.gguf", inputs, gcfg, store=store).artifact
        elif adapter:
            raise ConfigError("--adapter goes with a model, not with a GGUF export", fix="pass the model (it is exported with the adapter), or export the GGUF with --adapter first")
        r = run_stage("export.ollama", {"model": art}, cfg, store=store, output_name=name)
    folder = copy_out(r.artifact, out_dir) or str(r.artifact.path)
    hint = f"ollama create {name or 'my-model'} -f {Path(folder) / 'Modelfile'}"
    if r.artifact.manifest.meta.get("warning"):
        warn(r.artifact.manifest.meta["warning"])
    _emit(r, name, as_json, folder if out_dir else None, {"modelfile": str(Path(folder) / "Modelfile"), "hints": [hint]})


# --------------------------------------------------------------------------- ONNX
# (``export onnx`` and ``export foundry`` are registered on ``app`` here by the ONNX export module.)
from slmops.cli import export_onnx

export_onnx.register(app)


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="export")
