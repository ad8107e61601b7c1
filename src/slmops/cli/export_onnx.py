"""``slmops export onnx`` and ``slmops export foundry``: ONNX Runtime GenAI exports and Foundry Local packages.

Registered on the ``export`` app of :mod:`slmops.cli.export` by :func:`register`. Both commands
build their stage config, run the stage through the cached runner (``export.onnx`` /
``export.foundry``) and render the result; ``--verify`` runs the package in Foundry Local's own
runtime (:func:`slmops.export.foundry_check.verify_package`).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from slmops.cli.common import JsonOpt, open_cli_store
from slmops.cli.export_common import NameOpt, OutOpt, copy_out, emit_export, package
from slmops.cli.flags import ConfigFlags, Flag, config_command
from slmops.cli.render import progress_bars, warn
from slmops.errors import ConfigError
from slmops.export.foundry import FoundryConfig
from slmops.export.onnx import OnnxExportConfig
from slmops.stage.inputs import resolve_input
from slmops.stage.runner import run_stage
from slmops.store.artifact import Artifact

Opt = typer.Option
ModelArg = Annotated[str, typer.Argument(help="The model: name, name:3, name@alias, sha256:…, ./hf-folder or hf:org/name.")]
AdapterOpt = Annotated[str | None, Opt("--adapter", help="A LoRA adapter of MODEL to merge in or to export as a run-time adapter.")]

#: How the ONNX settings look on the command line (the rest are --field-name flags).
ONNX_FLAGS = {
    "precision": Flag("--precision", "-p"),
    "execution_provider": Flag("--execution-provider", "-e"),
    "symmetric": Flag("--symmetric/--asymmetric"),
    "quantize_embeddings": Flag("--quantize-embeddings/--float-embeddings"),
}
#: Settings that only mean something for a quantized (int4/int8) export.
_QUANT_ONLY = {"block_size": "--block-size", "symmetric": "--asymmetric", "accuracy_level": "--accuracy-level",
               "quant_algo": "--quant-algo", "mixed_precision": "--mixed-precision", "weight_grid": "--weight-grid"}


def check_onnx_flags(cfg: dict[str, Any]) -> dict[str, Any]:
    """Refuse quantization flags on a float export, naming the flags (before any work is done)."""
    precision = cfg.get("precision", OnnxExportConfig.model_fields["precision"].default)
    if precision in ("fp32", "fp16"):
        given = [flag for key, flag in _QUANT_ONLY.items() if key in cfg and not (key == "symmetric" and cfg[key])]
        if given:
            raise ConfigError(f"{', '.join(given)} only apply to --precision int4 or int8", fix=f"drop them, or use --precision int4 (not {precision})")
    return cfg


def _onnx_inputs(store: Any, model: str, adapter: str | None) -> dict[str, Artifact]:
    inputs = {"model": resolve_input(model, store, kind="model")}
    if adapter:
        inputs["adapter"] = resolve_input(adapter, store, kind="adapter")
    return inputs


def register(app: typer.Typer) -> None:
    """Add ``onnx`` and ``foundry`` to the ``export`` app."""

    @config_command(app, "onnx", config=OnnxExportConfig, stage="export.onnx", flags=ONNX_FLAGS)
    def onnx(
        model: ModelArg,
        adapter: AdapterOpt = None,
        name: NameOpt = None, out_dir: OutOpt = None, as_json: JsonOpt = False,
        *,
        cfg: dict[str, Any],
    ) -> None:
        """Export a model to ONNX Runtime GenAI (genai_config.json, tokenizer, chat template) with onnxruntime-genai's model builder."""
        with open_cli_store() as store, progress_bars(not as_json):
            r = run_stage("export.onnx", _onnx_inputs(store, model, adapter), check_onnx_flags(cfg), store=store, output_name=name)
        hints = [f"slmops generate {name or 'sha256:' + r.digest[:12]} 'Hello' (runs on ort-genai)"]
        q = r.artifact.manifest.meta.get("quantization")
        if q:
            hints.insert(0, f"{cfg.get('precision') or OnnxExportConfig.model_fields['precision'].default}: {q['algo']} rounding, block {q['block_size']}, "
                            f"mixed precision {q['mixed_precision']}" + (f" ({len(q['int8_matmuls'])} MatMuls at int8)" if q.get("int8_matmuls") else ""))
            if q.get("source_grid"):
                g = q["source_grid"]
                hints.insert(1, f"{g['matmuls']} of {g['total']} MatMuls written on the grid of {g['gguf']} ({', '.join(f'{k}×{v}' for k, v in g['types'].items())})")
        emit_export(r, name, as_json, copy_out(r.artifact, out_dir, folders=True), {"hints": hints})

    onnx_first = ConfigFlags(OnnxExportConfig, "export.onnx", ONNX_FLAGS, prefix="onnx__", only=("precision",), panel="ONNX export",
                             only_why="set by `slmops export onnx` (export the ONNX model first, then package it)")

    @config_command(app, "foundry", config=FoundryConfig, stage="export.foundry", more={"onnx_cfg": onnx_first},
                    hidden={"task": "Foundry Local has one task for a language model (chat-completion)"})
    def foundry(
        model: Annotated[str, typer.Argument(help="An ONNX export, or a model to export first (with --precision and --adapter).")],
        adapter: AdapterOpt = None,
        verify: Annotated[bool, Opt("--verify", help="Load the package in Foundry Local's runtime and compare a greedy reply with slmops'.")] = False,
        foundry_python: Annotated[str | None, Opt("--foundry-python", help="Python with foundry-local-sdk for --verify (or $SLMOPS_FOUNDRY_PYTHON).")] = None,
        name: NameOpt = None, out_dir: OutOpt = None, as_json: JsonOpt = False,
        *,
        cfg: dict[str, Any],
        onnx_cfg: dict[str, Any],
    ) -> None:
        """Write a Foundry Local bring-your-own-model package (inference_model.json, ONNX folder, cache layout)."""
        r = package(model, adapter, kind="onnx", export=("export.onnx", onnx_cfg), stage="export.foundry", role="onnx", cfg=cfg, name=name, as_json=as_json)
        extra: dict[str, Any] = {"hints": [f"model id {r.artifact.manifest.meta['model_id']}: see README.md in the package"]}
        if verify:
            from slmops.export.foundry_check import verify_package

            check = verify_package(r.artifact.path, python=foundry_python)
            extra["verify"] = check
            extra["hints"].append(
                f"Foundry Local ran it: {'same reply as slmops' if check['text_match'] else 'DIFFERENT reply from slmops'} {check['foundry_text']!r}"
            )
        folder = copy_out(r.artifact, out_dir, folders=True)
        emit_export(r, name, as_json, folder, extra)
        if verify and not extra["verify"]["text_match"]:
            warn("Foundry Local's greedy reply differs from slmops' ort-genai runtime")
            raise typer.Exit(1)
