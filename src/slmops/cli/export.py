"""``slmops export``: GGUF for llama.cpp, Ollama packages, GGUF LoRA adapters (and ONNX, in its own section).

Each command resolves its inputs, runs the export stage through the cached runner (so an export
is an artifact with lineage, made once) and, with ``--out DIR``, copies the files to a folder of
the user's choice. Sections: GGUF (``gguf``, ``gguf-lora``, ``ollama``) below; ONNX commands
(``onnx``, ``foundry``) are added to the same ``app`` in the ONNX section at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from slmops.cli.common import JsonOpt, open_cli_store
from slmops.cli.export_common import NameOpt, OutOpt, copy_out, emit_export, package
from slmops.cli.flags import ConfigFlags, Flag, config_command, parse_pairs
from slmops.cli.render import progress_bars, warn
from slmops.export.gguf_quantize import QTYPES, check_qtype
from slmops.export.stages_gguf import GGUFConfig, GGUFLoraConfig, OllamaConfig
from slmops.pipeline.inputs import resolve_input
from slmops.stage.runner import run_stage
from slmops.store.artifact import Artifact

app = typer.Typer(help="Export models: GGUF for llama.cpp and Ollama, ONNX for ONNX Runtime GenAI and Foundry Local.", no_args_is_help=True)
Opt = typer.Option
AdapterOpt = Annotated[str | None, Opt("--adapter", help="A LoRA adapter of MODEL: written as a GGUF LoRA applied at run time.")]

# --------------------------------------------------------------------------- GGUF

#: How the GGUF settings look on the command line (the choices of --qtype come from llama.cpp's table, QTYPES).
GGUF_FLAGS = {"qtype": Flag("--qtype", "-q", choices=tuple(QTYPES), parse=lambda v, _: check_qtype(v)), "name": Flag("--gguf-name")}


def gguf_flags(prefix: str, only: tuple[str, ...], why: str) -> ConfigFlags:
    """The GGUF settings a command that exports a GGUF first (``export ollama``) offers."""
    return ConfigFlags(GGUFConfig, "export.gguf", GGUF_FLAGS, prefix=prefix, only=only, only_why=why, panel="GGUF export")


def _gguf_inputs(store: Any, model: str, adapter: str | None, imatrix_data: str | None) -> dict[str, Artifact]:
    inputs = {"model": resolve_input(model, store, kind="model")}
    if adapter:
        inputs["adapter"] = resolve_input(adapter, store, kind="adapter")
    if imatrix_data:
        inputs["data"] = resolve_input(imatrix_data, store, kind="dataset")
    return inputs


@config_command(app, "gguf", config=GGUFConfig, stage="export.gguf", flags=GGUF_FLAGS)
def gguf(
    model: Annotated[str, typer.Argument(help="The model: name, name:3, name@alias, sha256:…, ./hf-folder or hf:org/name.")],
    adapter: AdapterOpt = None,
    imatrix_data: Annotated[str | None, Opt("--imatrix-data", help="Dataset (ref or file) to compute an importance matrix on (quantized types).")] = None,
    name: NameOpt = None, out_dir: OutOpt = None, as_json: JsonOpt = False,
    *,
    cfg: dict[str, Any],
) -> None:
    """Convert a llama/qwen2/phi3 (or mistral) model to GGUF, quantized by llama.cpp itself."""
    with open_cli_store() as store, progress_bars(not as_json):
        r = run_stage("export.gguf", _gguf_inputs(store, model, adapter, imatrix_data), cfg, store=store, output_name=name)
    emit_export(r, name, as_json, copy_out(r.artifact, out_dir))


@config_command(app, "gguf-lora", config=GGUFLoraConfig, stage="export.gguf_lora", flags={"name": Flag("--gguf-name")})
def gguf_lora(
    adapter: Annotated[str, typer.Argument(help="The PEFT LoRA adapter to convert.")],
    model: Annotated[str, Opt("--model", "-m", help="Its base model (needed for the architecture and tensor layout).")],
    name: NameOpt = None, out_dir: OutOpt = None, as_json: JsonOpt = False,
    *,
    cfg: dict[str, Any],
) -> None:
    """Convert a LoRA adapter alone to a GGUF LoRA (for a base GGUF you already have)."""
    with open_cli_store() as store, progress_bars(not as_json):
        inputs = {"adapter": resolve_input(adapter, store, kind="adapter"), "model": resolve_input(model, store, kind="model")}
        r = run_stage("export.gguf_lora", inputs, cfg, store=store, output_name=name)
    emit_export(r, name, as_json, copy_out(r.artifact, out_dir))


def _number(text: str) -> Any:
    try:
        return int(text) if text.strip().lstrip("-").isdigit() else float(text)
    except ValueError:
        return text


_OLLAMA_FLAGS = {"parameters": Flag("--param", multiple=True, cli_type=list[str], note="KEY=VALUE, repeatable",
                                    parse=lambda v, flag: parse_pairs(v, flag, "temperature=0.7", _number))}


@config_command(app, "ollama", config=OllamaConfig, stage="export.ollama", flags=_OLLAMA_FLAGS,
                more={"gguf_cfg": gguf_flags("gguf__", ("qtype", "merge_adapter", "allow_other_base"),
                                             "set by `slmops export gguf` (export the GGUF first, then package it)")})
def ollama(
    model: Annotated[str, typer.Argument(help="A GGUF export, or a model to export first (with --qtype and --adapter).")],
    adapter: AdapterOpt = None,
    name: NameOpt = None, out_dir: OutOpt = None, as_json: JsonOpt = False,
    *,
    cfg: dict[str, Any],
    gguf_cfg: dict[str, Any],
) -> None:
    """Write an Ollama package: the GGUF (and LoRA) next to a Modelfile with TEMPLATE, stops and ADAPTER lines."""
    r = package(model, adapter, kind="gguf", export=("export.gguf", gguf_cfg), stage="export.ollama", role="model", cfg=cfg, name=name, as_json=as_json)
    folder = copy_out(r.artifact, out_dir) or str(r.artifact.path)
    hint = f"ollama create {name or 'my-model'} -f {Path(folder) / 'Modelfile'}"
    if r.artifact.manifest.meta.get("warning"):
        warn(r.artifact.manifest.meta["warning"])
    emit_export(r, name, as_json, folder if out_dir else None, {"modelfile": str(Path(folder) / "Modelfile"), "hints": [hint]})


# --------------------------------------------------------------------------- ONNX
# (``export onnx`` and ``export foundry`` are registered on ``app`` here by the ONNX export module.)
from slmops.cli import export_onnx

export_onnx.register(app)


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="export")
