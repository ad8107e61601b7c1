"""Stage ``distill.train``: the student learns from the teacher, through the fine-tuning engine.

* ``sft`` — sequence-level KD: supervised fine-tuning on the teacher's answers (any teacher, any
  vocabulary).
* ``logits`` — logit-level KD from a local teacher (the stage's ``teacher`` input) run on every
  batch; the teacher and the student must share a tokenizer.
* ``topk`` — logit-level KD from the top-k logprobs ``distill.generate`` stored with the data.
* ``auto`` — ``logits`` with a teacher input, else ``topk`` when the data has top-k, else ``sft``.

The KD loss (forward KL, reverse KL or JSD at temperature T) is mixed with the cross-entropy on the
teacher's answer: ``alpha · KD + (1 − alpha) · CE``. Training itself — full or LoRA, checkpoints,
resume, validation, early stopping — is :func:`slmops.finetune.train.run_finetune`, given the KD
term through its ``loss_fn`` hook and this stage's own context (its cache key and work dir, so a
distillation run never resumes a plain fine-tune's checkpoints, and its run options: ``save_every``,
``resume``, ``report_to``…).

Defaults follow practice for pretrained students (learning rate 1e-5…5e-5 for a full fine-tune,
2–5 epochs); settings outside those ranges are allowed, with a warning.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from slmops.errors import ConfigError
from slmops.stage import StageContext, StageOutput
from slmops.store.artifact import Artifact

log = logging.getLogger(__name__)

LR_RANGE = (1e-5, 5e-5)
EPOCH_RANGE = (2, 5)
DEFAULTS: dict[str, dict[str, Any]] = {"full": {"epochs": 3, "learning_rate": 5e-5}, "lora": {"epochs": 3, "learning_rate": 2e-4}}


class DistillTrainConfig(BaseModel):
    """``distill.train``: how the student learns (KD mode and loss) and the fine-tuning settings."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["full", "lora"] = Field("full", description="Train every weight (full) or a LoRA adapter (lora)")
    mode: Literal["auto", "sft", "logits", "topk"] = Field(
        "auto", description="sft (teacher text only), logits (local teacher), topk (stored logprobs), auto (the best the inputs allow)"
    )
    loss: Literal["forward_kl", "reverse_kl", "jsd"] = Field("forward_kl", description="KD divergence: forward_kl, reverse_kl or jsd")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the KD term: alpha·KD + (1−alpha)·CE")
    temperature: float = Field(2.0, gt=0, le=20, description="Softmax temperature of both distributions (loss scaled by T²)")
    jsd_beta: float = Field(0.5, gt=0, lt=1, description="JSD mixture weight β (0.5 = symmetric)")
    train: dict[str, Any] = Field(
        default_factory=dict, description="Fine-tuning settings of the method (epochs, learning_rate, batch_size, max_length, lora_rank …)"
    )

    @model_validator(mode="after")
    def _resolve(self) -> DistillTrainConfig:
        from slmops.finetune.config import make_config

        values = {**DEFAULTS[self.method], **self.train}
        self.train = make_config(self.method, values, source="distill train settings").model_dump(mode="json")
        return self


def resolve_mode(cfg: DistillTrainConfig, teacher: Artifact | None, data: Artifact) -> str:
    has_topk = (data.path / "topk").is_dir()
    if cfg.mode == "auto":
        return "logits" if teacher is not None else "topk" if has_topk else "sft"
    if cfg.mode == "logits" and teacher is None:
        raise ConfigError(
            "--mode logits needs a local teacher", fix="pass --teacher MODEL (same tokenizer as the student), or use --mode topk / sft"
        )
    if cfg.mode != "logits" and teacher is not None:
        log.warning("--teacher is only used by --mode logits; with --mode %s it is ignored", cfg.mode)
    return cfg.mode


def practice_warnings(student: Artifact, cfg: DistillTrainConfig, ft: Any) -> list[str]:
    """Warnings for settings outside what works in practice for a pretrained student."""
    stage = student.manifest.stage.name if student.manifest.stage else None
    if stage == "models.init":  # a randomly initialised student learns from scratch: other rules apply
        return []
    out = []
    lo, hi = LR_RANGE
    if cfg.method == "full" and not lo <= ft.learning_rate <= hi:
        out.append(
            f"--learning-rate {ft.learning_rate:g} is outside {lo:g}…{hi:g}, the usual range for fully fine-tuning a pretrained student"
        )
    if ft.max_steps is None and not EPOCH_RANGE[0] <= ft.epochs <= EPOCH_RANGE[1]:
        out.append(f"--epochs {ft.epochs} is outside {EPOCH_RANGE[0]}–{EPOCH_RANGE[1]}, the usual range for distillation")
    for w in out:
        log.warning("%s", w)
    return out


def run_distill_train(inputs: dict[str, Artifact], cfg: DistillTrainConfig, ctx: StageContext) -> StageOutput:
    """Train the student through the fine-tuning engine in this stage's context (its own work dir and run options)."""
    from slmops.distill.kd import KDSettings, TeacherLogitsKD, TopKKD, build_topk_table, check_same_vocabulary
    from slmops.finetune.config import make_config
    from slmops.finetune.train import check_inputs, run_finetune
    from slmops.models.loading import load_tokenizer

    student, data, teacher = inputs["student"], inputs["data"], inputs.get("teacher")
    if teacher is not None and teacher.kind != "model":
        raise ConfigError(
            f"--teacher sha256:{teacher.short} is a {teacher.kind}, not a model", fix="merge an adapter teacher into its base first"
        )
    ft = make_config(cfg.method, cfg.train)
    mode = resolve_mode(cfg, teacher, data)
    warnings = practice_warnings(student, cfg, ft)
    settings = KDSettings(kind=cfg.loss, temperature=cfg.temperature, alpha=cfg.alpha, beta=cfg.jsd_beta)
    ft_inputs = {"model": student, "data": data}
    max_length = check_inputs(ft_inputs, ft)
    loss_fn: Any = None
    facts: dict[str, Any] = {"mode": mode}
    if mode == "logits":
        assert teacher is not None
        vocab = check_same_vocabulary(load_tokenizer(student), load_tokenizer(teacher), student=student.short, teacher=teacher.short)
        loss_fn = TeacherLogitsKD(teacher, settings, vocab)
    elif mode == "topk":
        if ft.packing:
            raise ConfigError(
                "--mode topk cannot be combined with --packing", fix="drop --packing (top-k logprobs are matched per example)"
            )
        table = build_topk_table(load_tokenizer(student), data, ft.train_split, template=ft.text_template, max_length=max_length)
        facts.update(topk_records=table.records, topk_aligned=table.aligned, topk_k=table.k)
        loss_fn = TopKKD(table, settings)
    result = run_finetune(cfg.method, ft_inputs, ft, ctx, loss_fn=loss_fn)
    if loss_fn is not None:
        facts.update(loss_fn.stats.to_dict())
        if isinstance(loss_fn, TopKKD):
            facts["topk_rows_without_teacher"] = loss_fn.misses
    result.metrics.update({f"distill_{k}": v for k, v in facts.items() if isinstance(v, int | float) and not isinstance(v, bool)})
    result.meta["distill"] = {
        **facts,
        "loss": cfg.loss if mode != "sft" else None,
        "alpha": cfg.alpha if mode != "sft" else None,
        "temperature": cfg.temperature if mode != "sft" else None,
        "teacher": teacher.digest if teacher else None,
        "warnings": warnings,
    }
    return result
