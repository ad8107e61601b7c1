"""Registers the ONNX stages: ``export.onnx`` (HF model → ORT GenAI folder) and ``export.foundry`` (→ Foundry Local package).

``export.onnx`` takes a ``model`` and optionally an ``adapter`` (merged before export, exported
as a switchable ORT GenAI adapter with ``adapter_mode=runtime``, or kept always on as float LoRA
branches beside the quantized base with ``adapter_mode=float``), runs the model builder
(:mod:`slmops.export.onnx`), and — unless ``parity_texts`` is 0 — scores the result against the
source on the torch runtime through :func:`slmops.export.parity.measure_parity` (KL, top-1
agreement, greedy match, tokenizer match), so every ONNX artifact carries its own parity numbers.
``export.foundry`` takes that ``onnx`` artifact and lays it out for Foundry Local
(:mod:`slmops.export.foundry`). Both write through the stage runner: a failure or an interruption
leaves no artifact.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from slmops.errors import ConfigError
from slmops.export.foundry import FoundryConfig
from slmops.export.onnx import OnnxExportConfig
from slmops.stage import StageContext, StageOutput, stage
from slmops.store.artifact import Artifact

log = logging.getLogger(__name__)

_PARITY_KEYS = ("kl_mean", "kl_p95", "kl_max", "top1_agreement", "ppl_increase", "greedy_match", "tokenizer_match", "tokens_scored")
_CHATS = (("What is the capital of France?", "Paris."), ("How many days are in a week?", "Seven."))


def parity_records(n: int) -> list[Any]:
    """``n`` short texts of the built-in corpus and two one-turn chats (what the parity check scores)."""
    from slmops.data.records import parse_record
    from slmops.models.corpus import builtin_corpus

    texts = [parse_record({"text": t}) for t in builtin_corpus(max(1, n - len(_CHATS)))]
    chats = [parse_record({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) for q, a in _CHATS]
    return (texts + chats)[: max(n, 1)]


def onnx_parity(reference_dir: Path, onnx_dir: Path, cfg: OnnxExportConfig, *, adapter: str | None = None) -> dict[str, Any]:
    """Parity of the exported folder against the torch model in ``reference_dir`` (fp32)."""
    from slmops.export.parity import ParityConfig, measure_parity
    from slmops.runtimes.ortgenai_rt import OrtGenAIRuntime
    from slmops.runtimes.torch_rt import TorchRuntime

    pcfg = ParityConfig(max_texts=cfg.parity_texts, max_tokens=cfg.parity_tokens, greedy_prompts=min(2, cfg.parity_texts), greedy_tokens=8,
                        max_kl=None)
    with TorchRuntime.from_path(reference_dir) as ref, OrtGenAIRuntime.from_path(onnx_dir) as cand:
        metrics = measure_parity(cand, ref, parity_records(cfg.parity_texts), pcfg, adapter=adapter)
    return {k: metrics.get(k) for k in _PARITY_KEYS}


@stage("export.onnx", config=OnnxExportConfig, kind="onnx", format="ort-genai", inputs=("model",), optional_inputs=("adapter",))
def export_onnx_stage(inputs: dict[str, Artifact], cfg: OnnxExportConfig, ctx: StageContext) -> StageOutput:
    """Export a model (optionally with a LoRA adapter) to ONNX Runtime GenAI at fp32/fp16/int8/int4 with the model builder."""
    from slmops.export.onnx import check_disk, check_source, export_onnx
    from slmops.export.onnx_adapters import check_adapter_input, expose_lora_inputs, lora_node_exclusions, merge_adapter
    from slmops.export.onnx_grid import choose_source_grid
    from slmops.models.loading import model_folder
    from slmops.runtimes.ortgenai_adapters import check_peft_lora, write_adapter
    from slmops.runtimes.ortgenai_files import ADAPTER_DIR, ADAPTER_SUFFIX

    model, adapter = inputs["model"], inputs.get("adapter")
    if model.kind != "model":
        raise ConfigError(f"artifact {model.short} is a {model.kind}, not a model", fix="pass a model artifact (an HF folder in the store)")
    src = model_folder(model)
    if adapter is None and cfg.adapter_mode != "merge":
        raise ConfigError(f"--adapter-mode {cfg.adapter_mode} needs an adapter", fix="pass --adapter ADAPTER (a LoRA adapter trained on this model)")
    source = check_source(src)
    grid = choose_source_grid(cfg, model, ctx.store, merged=adapter is not None and cfg.adapter_mode == "merge")
    merged = ctx.out / ".merged"
    reference, active = src, None
    try:
        if adapter is not None:
            adapter_dir = check_adapter_input(model, adapter)
            mode = cfg.adapter_mode
            if mode != "merge":
                check_peft_lora(adapter_dir)
            check_disk(ctx.out, source["parameters_estimate"], "fp32")
            if mode == "merge" or cfg.parity_texts:
                reference = merge_adapter(src, adapter_dir, merged)
            if mode == "merge":
                facts = export_onnx(reference, ctx.out, cfg)
            else:
                facts = export_onnx(src, ctx.out, cfg, adapter_path=adapter_dir, exclude_nodes=lora_node_exclusions(source["num_layers"]),
                                    source_grid=grid)
                if mode == "runtime":
                    adapter_file = Path(ADAPTER_DIR) / f"{cfg.adapter_name}{ADAPTER_SUFFIX}"
                    write_adapter(expose_lora_inputs(ctx.out), ctx.out / adapter_file)
                    facts["adapters"] = {cfg.adapter_name: adapter_file.as_posix()}
                    active = cfg.adapter_name
            facts["adapter"] = {"digest": adapter.digest, "mode": mode}
        else:
            facts = export_onnx(src, ctx.out, cfg, source_grid=grid)
        parity = onnx_parity(reference, ctx.out, cfg, adapter=active) if cfg.parity_texts and cfg.execution_provider == "cpu" else {}
    finally:
        shutil.rmtree(merged, ignore_errors=True)
    facts["size_bytes"] = sum(p.stat().st_size for p in ctx.out.rglob("*") if p.is_file())
    params = source["parameters_estimate"]
    metrics = {"size_bytes": facts["size_bytes"], "parameters": params,
               "bits_per_weight": round(facts["size_bytes"] * 8 / params, 3) if params else None, **parity}
    if parity.get("tokenizer_match") not in (None, 1.0):
        log.warning("export.onnx: ORT GenAI tokenizes %.0f%% of the parity texts like the source", 100 * parity["tokenizer_match"])
    return StageOutput(metrics=metrics, meta=facts)


@stage("export.foundry", config=FoundryConfig, kind="onnx", format="foundry-local", inputs=("onnx",))
def export_foundry_stage(inputs: dict[str, Artifact], cfg: FoundryConfig, ctx: StageContext) -> StageOutput:
    """Package an ONNX GenAI export for Foundry Local (inference_model.json with the prompt template, cache layout)."""
    from slmops.export.foundry import build_package, default_name

    onnx = inputs["onnx"]
    if onnx.kind != "onnx" or onnx.manifest.format not in ("ort-genai", "onnx"):
        raise ConfigError(f"artifact {onnx.short} is a {onnx.kind} ({onnx.manifest.format}), not an ONNX GenAI export",
                          fix="export the model first: `slmops export onnx MODEL`, then package that artifact")
    name = cfg.model_name or default_name(onnx.manifest.meta, onnx.digest)
    facts = build_package(onnx.path, ctx.out, cfg, name=name)
    facts.update({k: onnx.manifest.meta.get(k) for k in ("precision", "architecture", "model_type") if k in onnx.manifest.meta})
    size = sum(p.stat().st_size for p in ctx.out.rglob("*") if p.is_file())
    return StageOutput(metrics={"size_bytes": size}, meta=facts)
