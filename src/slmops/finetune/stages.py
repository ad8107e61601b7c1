"""Registers the fine-tuning stages: ``finetune.full``, ``finetune.lora``, ``finetune.dora``, ``finetune.qlora``.

Each takes a ``model`` (a model artifact) and ``data`` (a dataset artifact) and runs
:func:`slmops.finetune.train.run_finetune`; adapters come out as kind ``adapter`` / format
``peft``, a full fine-tune as kind ``model`` / format ``hf-safetensors``. Heavy libraries load
only when a stage runs. The adapter stages (``adapters.merge``, ``adapters.combine``) are in
:mod:`slmops.finetune.adapter_stages`.
"""

from __future__ import annotations

from slmops.finetune.config import DoraConfig, FullConfig, LoraConfig, QloraConfig
from slmops.stage import StageContext, StageOutput, stage
from slmops.store.artifact import Artifact

INPUTS = ("model", "data")


def _run(method: str, inputs: dict[str, Artifact], cfg: object, ctx: StageContext) -> StageOutput:
    from slmops.finetune.train import run_finetune

    return run_finetune(method, inputs, cfg, ctx)  # type: ignore[arg-type]


@stage("finetune.full", config=FullConfig, kind="model", format="hf-safetensors", inputs=INPUTS)
def full(inputs: dict[str, Artifact], cfg: FullConfig, ctx: StageContext) -> StageOutput:
    """Fine-tune every weight of a model on a dataset (output: a complete model)."""
    return _run("full", inputs, cfg, ctx)


@stage("finetune.lora", config=LoraConfig, kind="adapter", format="peft", inputs=INPUTS)
def lora(inputs: dict[str, Artifact], cfg: LoraConfig, ctx: StageContext) -> StageOutput:
    """Train a LoRA adapter on a frozen base (output: a PEFT adapter folder)."""
    return _run("lora", inputs, cfg, ctx)


@stage("finetune.dora", config=DoraConfig, kind="adapter", format="peft", inputs=INPUTS)
def dora(inputs: dict[str, Artifact], cfg: DoraConfig, ctx: StageContext) -> StageOutput:
    """Train a DoRA (weight-decomposed LoRA) adapter on a frozen base (output: a PEFT adapter folder)."""
    return _run("dora", inputs, cfg, ctx)


@stage("finetune.qlora", config=QloraConfig, kind="adapter", format="peft", inputs=INPUTS)
def qlora(inputs: dict[str, Artifact], cfg: QloraConfig, ctx: StageContext) -> StageOutput:
    """Train a LoRA adapter on a 4-bit (bitsandbytes) base (output: a PEFT adapter that also loads on the fp32 base)."""
    return _run("qlora", inputs, cfg, ctx)
