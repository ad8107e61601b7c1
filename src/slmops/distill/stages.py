"""Registers the distillation stages: ``distill.generate``, ``distill.train`` and ``distill.report``."""

from __future__ import annotations

from slmops.distill.config import GenerateConfig
from slmops.distill.report import ReportConfig
from slmops.distill.train import DistillTrainConfig
from slmops.stage import StageContext, StageOutput, stage
from slmops.store.artifact import Artifact

GENERATE = "distill.generate"
TRAIN = "distill.train"


@stage(GENERATE, config=GenerateConfig, kind="dataset", format="jsonl", inputs=("prompts",), optional_inputs=("teacher",))
def generate(inputs: dict[str, Artifact], cfg: GenerateConfig, ctx: StageContext) -> StageOutput:
    """A teacher (endpoint or local model) answers the prompts; validated answers become a chat dataset."""
    from slmops.distill.generate import generate as run

    return run(inputs["prompts"], cfg, ctx, teacher=inputs.get("teacher"))


@stage("distill.report", config=ReportConfig, kind="report", format="json", inputs=("teacher", "student", "data"))
def report(inputs: dict[str, Artifact], cfg: ReportConfig, ctx: StageContext) -> StageOutput:
    """Teacher vs student on a test split: size, memory, latency, accuracy, and the retention ratios."""
    from slmops.distill.report import report as run

    return run(inputs["teacher"], inputs["student"], inputs["data"], cfg, ctx.out)


@stage(TRAIN, config=DistillTrainConfig, kind="model", format="hf-safetensors", inputs=("student", "data"), optional_inputs=("teacher",))
def train(inputs: dict[str, Artifact], cfg: DistillTrainConfig, ctx: StageContext) -> StageOutput:
    """The student learns from the teacher: SFT on its answers, plus logit KD from its logits or stored top-k."""
    from slmops.distill.train import run_distill_train

    return run_distill_train(inputs, cfg, ctx)
