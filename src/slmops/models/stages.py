"""Registers the model stages: ``models.init`` (random init of a real architecture), ``models.import`` (HF folders),
``models.import_gguf`` (a .gguf file as it is), ``models.from_gguf`` (a GGUF dequantized into an HF folder) and
``models.shrink`` (a smaller model pruned from a teacher); and the locator of ``hf:`` references (the hub
download) for :mod:`slmops.stage.inputs`."""

from __future__ import annotations

from slmops.models.gguf_import import FromGGUFConfig, ImportGGUFConfig, check_convertible, gguf_to_hf, import_gguf_file
from slmops.models.gguf_import import import_fingerprint as gguf_fingerprint
from slmops.models.importer import ImportConfig, hub_download, import_fingerprint, import_folder
from slmops.models.init import InitConfig, dataset_texts, init_model
from slmops.models.shrink import ShrinkConfig, shrink_fingerprint
from slmops.stage import StageContext, StageOutput, stage
from slmops.stage.inputs import register_preflight, register_source
from slmops.store.artifact import Artifact

# what `hf:` references name, for the one resolver (slmops.stage.inputs); a GGUF is checked before `--to hf`
register_source("hf", hub_download)
register_preflight("models.from_gguf", check_convertible)

_METRIC_KEYS = ("parameters", "vocab_size", "context_length")


@stage("models.init", config=InitConfig, kind="model", format="hf-safetensors", optional_inputs=("data",))
def init(inputs: dict[str, Artifact], cfg: InitConfig, ctx: StageContext) -> StageOutput:
    """Randomly initialise a llama/qwen2/phi3 model with a tokenizer trained on the data (or a built-in corpus)."""
    data = inputs.get("data")
    facts = init_model(cfg, ctx.out, texts=dataset_texts(data) if data is not None else None)
    return StageOutput(metrics={k: facts[k] for k in _METRIC_KEYS}, meta=facts)


@stage("models.import", config=ImportConfig, kind="model", format="hf-safetensors", fingerprint=import_fingerprint)
def import_(inputs: dict[str, Artifact], cfg: ImportConfig, ctx: StageContext) -> StageOutput:
    """Import a Hugging Face model folder (safetensors only, no remote code)."""
    facts = import_folder(cfg, ctx.out)
    return StageOutput(metrics={k: facts[k] for k in _METRIC_KEYS if facts.get(k) is not None}, meta=facts)


@stage("models.import_gguf", config=ImportGGUFConfig, kind="gguf", format="gguf", fingerprint=gguf_fingerprint)
def import_gguf(inputs: dict[str, Artifact], cfg: ImportGGUFConfig, ctx: StageContext) -> StageOutput:
    """Import a .gguf model file as it is (run by llama.cpp); records its sha256 and source."""
    facts = import_gguf_file(cfg, ctx.out)
    params = int(facts["parameters"] or 0)
    metrics = {"size_bytes": facts["file_bytes"], "parameters": params, "bits_per_weight": round(facts["file_bytes"] * 8 / params, 3) if params else None}
    return StageOutput(metrics=metrics, meta=facts)


@stage("models.from_gguf", config=FromGGUFConfig, kind="model", format="hf-safetensors", inputs=("model",))
def from_gguf(inputs: dict[str, Artifact], cfg: FromGGUFConfig, ctx: StageContext) -> StageOutput:
    """Dequantize a GGUF model into a Hugging Face safetensors folder (config, tokenizer, chat template, weights)."""
    facts = gguf_to_hf(inputs["model"], cfg, ctx.out)
    return StageOutput(metrics={k: facts[k] for k in _METRIC_KEYS if facts.get(k) is not None}, meta=facts)


@stage("models.shrink", config=ShrinkConfig, kind="model", format="hf-safetensors", inputs=("model",), optional_inputs=("data",), fingerprint=shrink_fingerprint)
def shrink(inputs: dict[str, Artifact], cfg: ShrinkConfig, ctx: StageContext) -> StageOutput:
    """A smaller model of the same architecture and tokenizer, pruned from the teacher by measured importance."""
    from slmops.models.shrink import SHRINK_BATCH_SIZE, shrink_model

    data = inputs.get("data")
    facts = shrink_model(inputs["model"], cfg, ctx.out, texts=list(dataset_texts(data)) if data is not None else None,
                         batch_size=ctx.options.batch(SHRINK_BATCH_SIZE))
    keys = ("parameters", "parameters_teacher", "parameter_ratio", "perplexity_teacher", "perplexity_before_healing", "vocab_size", "context_length")
    return StageOutput(metrics={k: facts[k] for k in keys if facts.get(k) is not None}, meta=facts)
