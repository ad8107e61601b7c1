"""Stage ``data.synth``: write one built-in task as a train/validation/test dataset artifact."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from slmops.data.io import write_jsonl
from slmops.data.records import parse_record
from slmops.data.synth.tasks import TASKS, generate_task
from slmops.stage import StageContext, StageOutput, stage


class SynthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: str = Field("support-intent", description=f"Built-in task: {', '.join(TASKS)}")
    n: int = Field(600, ge=10, le=1_000_000, description="Total number of records across the three splits")
    seed: int = Field(0, description="Seed: the same seed gives the same records")
    validation: float = Field(0.1, gt=0, lt=0.5, description="Share of records in the validation split")
    test: float = Field(0.15, gt=0, lt=0.5, description="Share of records in the test split (held-out templates)")
    prompts_only: bool = Field(False, description="Drop the answers: prompt records for a teacher to label")


@stage("data.synth", config=SynthConfig, kind="dataset", format="jsonl")
def synth(inputs: dict, cfg: SynthConfig, ctx: StageContext) -> StageOutput:
    """Generate a built-in task (support intents, JSON extraction, arithmetic) with held-out test templates."""
    splits = generate_task(cfg.task, cfg.n, seed=cfg.seed, validation=cfg.validation, test=cfg.test)
    counts = {}
    for split, rows in splits.items():
        if cfg.prompts_only:
            rows = [{"prompt": r["messages"][1]["content"], "system": r["messages"][0]["content"], "label": r["label"], "meta": r["meta"]}
                    for r in rows]
        counts[split] = write_jsonl([parse_record(r) for r in rows], ctx.out / f"{split}.jsonl")
    return StageOutput(metrics={"records": sum(counts.values()), **counts}, meta={"task": cfg.task, "source": "built-in"})
