"""``slmops export onnx`` and ``slmops export foundry``: ONNX Runtime GenAI exports and Foundry Local packages.

Registered on the ``export`` app of :mod:`slmops.cli.export` by :func:`register`. Both commands
build their stage config, run the stage through the cached runner (``export.onnx`` /
``export.foundry``) and render the result; ``--verify`` runs the package in Foundry Local's own
runtime (:func:`slmops.export.foundry_check.verify_package`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any

import typer

from slmops.cli.common import JsonOpt, open_cli_store
from slmops.cli.render import progress_bars, warn
from slmops.errors import ConfigError
from slmops.pipeline.inputs import resolve_input
from slmops.stage.runner import run_stage
from slmops.store.artifact import MANIFEST, Artifact

Opt = typer.Option
ModelArg = Annotated[str, typer.Argument(help="The model: name, name:3, name@alias, sha256:…, ./hf-folder or hf:org/name.")]
PrecisionOpt = Annotated[str, Opt("--precision", "-p", help="fp32, fp16, int8 or int4 (weight-only MatMulNBits).")]
BlockOpt = Annotated[int | None, Opt("--block-size", help="int4/int8: weights per quantization block (16, 32, 64, 128, 256; default 128 for int4, 64 for int8).")]
AsymOpt = Annotated[bool, Opt("--asymmetric", help="int4/int8: asymmetric quantization (uint4/uint8 with zero points).")]
AccOpt = Annotated[int | None, Opt("--accuracy-level", help="int4/int8: MatMulNBits activation precision (1 fp32, 2 fp16, 3 bf16, 4 int8).")]
AlgoOpt = Annotated[str | None, Opt("--quant-algo", help="int4/int8: weight rounding: k_quant (llama.cpp-style scale search; the int4 default "
                                                         "when the embedding is tied to the LM head), rtn, or default (the builder's MLAS "
                                                         "RTN; the default otherwise).")]
MixedOpt = Annotated[str | None, Opt("--mixed-precision", help="int4: MatMuls kept at int8: first_last (default: LM head + first eighth of the "
                                                               "layers' attention), last (LM head), mixed (llama.cpp Q4_K_M's layers) or none.")]
EmbOpt = Annotated[bool, Opt("--quantize-embeddings/--float-embeddings", help="int4: quantize the token embedding too.")]
GridOpt = Annotated[str, Opt("--weight-grid", help="int4/int8: source (a model dequantized from a Q4_0/Q4_1/Q8_0 GGUF keeps that GGUF's exact "
                                                    "grid), requantize (round every weight anew), or auto (source when the model comes from such "
                                                    "a GGUF and no adapter is merged in; the default).")]
EpOpt = Annotated[str, Opt("--execution-provider", "-e", help="cpu (default), cuda, dml or webgpu.")]
AdapterOpt = Annotated[str | None, Opt("--adapter", help="A LoRA adapter of MODEL to merge in or to export as a run-time adapter.")]
ModeOpt = Annotated[str, Opt("--adapter-mode", help="merge (into the weights), runtime (a switchable .onnx_adapter) or float (always on, "
                                                      "float LoRA beside the quantized weights).")]
AdapterNameOpt = Annotated[str, Opt("--adapter-name", help="Name of the run-time adapter (adapters/NAME.onnx_adapter).")]
ParityOpt = Annotated[int, Opt("--parity-texts", help="Texts scored against the source model (KL, top-1, greedy); 0 skips.")]
NameOpt = Annotated[str | None, Opt("--name", "-n", help="Registry name for the export (a new version each time).")]
OutOpt = Annotated[Path | None, Opt("--out", "-o", help="Also copy the exported files into this folder.")]


def onnx_config(precision: str, *, block_size: int | None = None, asymmetric: bool = False, accuracy_level: int | None = None,
                quant_algo: str | None = None, mixed_precision: str | None = None, quantize_embeddings: bool = True, execution_provider: str = "cpu",
                adapter_mode: str = "merge", adapter_name: str = "default", parity_texts: int = 4, weight_grid: str = "auto") -> dict[str, Any]:
    """The ``export.onnx`` config for the CLI flags (only what differs from the defaults, so cache keys stay stable)."""
    from slmops.export.onnx import PRECISIONS

    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision} is not supported by export.onnx", fix=f"use one of {', '.join(PRECISIONS)}")
    if adapter_mode not in ("merge", "runtime", "float"):
        raise ConfigError(f"--adapter-mode {adapter_mode} is not a mode", fix="use merge, runtime or float")
    if precision in ("fp32", "fp16"):
        given = [flag for flag, v in (("--block-size", block_size), ("--asymmetric", asymmetric or None), ("--accuracy-level", accuracy_level),
                                      ("--quant-algo", quant_algo), ("--mixed-precision", mixed_precision),
                                      ("--weight-grid", None if weight_grid == "auto" else weight_grid)) if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} only apply to --precision int4 or int8", fix=f"drop them, or use --precision int4 (not {precision})")
    cfg: dict[str, Any] = {"precision": precision}
    for key, value, default in (("block_size", block_size, None), ("symmetric", not asymmetric, True), ("accuracy_level", accuracy_level, None),
                                ("quant_algo", quant_algo, None), ("mixed_precision", mixed_precision, None), ("quantize_embeddings", quantize_embeddings, True),
                                ("execution_provider", execution_provider, "cpu"), ("adapter_mode", adapter_mode, "merge"),
                                ("adapter_name", adapter_name, "default"), ("parity_texts", parity_texts, 4), ("weight_grid", weight_grid, "auto")):
        if value != default:
            cfg[key] = value
    return cfg


def copy_tree(art: Artifact, dest: Path | None) -> str | None:
    """Copy an artifact's files and folders (not its manifest) into ``dest``; return the folder."""
    if dest is None:
        return None
    dest = dest.expanduser().resolve()
    dest.mkdir(parents=True, exist_ok=True)
    for item in sorted(art.path.iterdir()):
        if item.name == MANIFEST:
            continue
        if item.is_dir():
            shutil.copytree(item, dest / item.name, dirs_exist_ok=True)
        else:
            shutil.copy2(item, dest / item.name)
    return str(dest)


def _onnx_inputs(store: Any, model: str, adapter: str | None) -> dict[str, Artifact]:
    inputs = {"model": resolve_input(model, store, kind="model")}
    if adapter:
        inputs["adapter"] = resolve_input(adapter, store, kind="adapter")
    return inputs


def register(app: typer.Typer) -> None:
    """Add ``onnx`` and ``foundry`` to the ``export`` app."""
    from slmops.cli.export import _emit

    @app.command("onnx")
    def onnx(
        model: ModelArg,
        precision: PrecisionOpt = "int4",
        block_size: BlockOpt = None,
        asymmetric: AsymOpt = False,
        accuracy_level: AccOpt = None,
        quant_algo: AlgoOpt = None,
        mixed_precision: MixedOpt = None,
        quantize_embeddings: EmbOpt = True,
        weight_grid: GridOpt = "auto",
        execution_provider: EpOpt = "cpu",
        adapter: AdapterOpt = None,
        adapter_mode: ModeOpt = "merge",
        adapter_name: AdapterNameOpt = "default",
        parity_texts: ParityOpt = 4,
        name: NameOpt = None,
        out_dir: OutOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Export a model to ONNX Runtime GenAI (genai_config.json, tokenizer, chat template) with onnxruntime-genai's model builder."""
        cfg = onnx_config(precision, block_size=block_size, asymmetric=asymmetric, accuracy_level=accuracy_level, quant_algo=quant_algo,
                          mixed_precision=mixed_precision, quantize_embeddings=quantize_embeddings, execution_provider=execution_provider, adapter_mode=adapter_mode,
                          adapter_name=adapter_name, parity_texts=parity_texts, weight_grid=weight_grid)
        with open_cli_store() as store, progress_bars(not as_json):
            r = run_stage("export.onnx", _onnx_inputs(store, model, adapter), cfg, store=store, output_name=name)
        hints = [f"slmops generate {name or 'sha256:' + r.digest[:12]} 'Hello' (runs on ort-genai)"]
        q = r.artifact.manifest.meta.get("quantization")
        if q:
            hints.insert(0, f"{precision}: {q['algo']} rounding, block {q['block_size']}, mixed precision {q['mixed_precision']}"
                            + (f" ({len(q['int8_matmuls'])} MatMuls at int8)" if q.get("int8_matmuls") else ""))
            if q.get("source_grid"):
                g = q["source_grid"]
                hints.insert(1, f"{g['matmuls']} of {g['total']} MatMuls written on the grid of {g['gguf']} ({', '.join(f'{k}×{v}' for k, v in g['types'].items())})")
        _emit(r, name, as_json, copy_tree(r.artifact, out_dir), {"hints": hints})

    @app.command("foundry")
    def foundry(
        model: Annotated[str, typer.Argument(help="An ONNX export, or a model to export first (with --precision and --adapter).")],
        precision: PrecisionOpt = "int4",
        adapter: AdapterOpt = None,
        model_name: Annotated[str | None, Opt("--model-name", help="Model name in Foundry Local (default: slmops-<arch>-<precision>-<digest>).")] = None,
        version: Annotated[int, Opt("--version", help="Model version (the :N of the model id).")] = 1,
        publisher: Annotated[str, Opt("--publisher", help="Publisher folder in Foundry Local's cache.")] = "slmops",
        verify: Annotated[bool, Opt("--verify", help="Load the package in Foundry Local's runtime and compare a greedy reply with slmops'.")] = False,
        foundry_python: Annotated[str | None, Opt("--foundry-python", help="Python with foundry-local-sdk for --verify (or $SLMOPS_FOUNDRY_PYTHON).")] = None,
        name: NameOpt = None,
        out_dir: OutOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Write a Foundry Local bring-your-own-model package (inference_model.json, ONNX folder, cache layout)."""
        cfg: dict[str, Any] = {"version": version, "publisher": publisher}
        if model_name:
            cfg["model_name"] = model_name
        with open_cli_store() as store, progress_bars(not as_json):
            art = resolve_input(model, store, kind=("onnx", "model"))
            if art.kind == "model":
                art = run_stage("export.onnx", {"model": art, **({"adapter": resolve_input(adapter, store, kind="adapter")} if adapter else {})},
                                onnx_config(precision), store=store).artifact
            elif adapter:
                raise ConfigError("--adapter goes with a model, not with an ONNX export", fix="pass the model, or export the ONNX model with --adapter first")
            r = run_stage("export.foundry", {"onnx": art}, cfg, store=store, output_name=name)
        extra: dict[str, Any] = {"hints": [f"model id {r.artifact.manifest.meta['model_id']}: see README.md in the package"]}
        if verify:
            from slmops.export.foundry_check import verify_package

            check = verify_package(r.artifact.path, python=foundry_python)
            extra["verify"] = check
            extra["hints"].append(
                f"Foundry Local ran it: {'same reply as slmops' if check['text_match'] else 'DIFFERENT reply from slmops'} {check['foundry_text']!r}"
            )
        folder = copy_tree(r.artifact, out_dir)
        _emit(r, name, as_json, folder, extra)
        if verify and not extra["verify"]["text_match"]:
            warn("Foundry Local's greedy reply differs from slmops' ort-genai runtime")
            raise typer.Exit(1)
