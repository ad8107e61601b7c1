"""Fine-tuning configs: what is trained (cache-keyed) and how the run is executed (not cache-keyed).

* :class:`FullConfig`, :class:`LoraConfig`, :class:`DoraConfig`, :class:`QloraConfig` — one per
  method (stages ``finetune.full|lora|dora|qlora``). Every field changes the result, so every field
  is part of the runner's cache key and lands in the manifest as the resolved config.
* Run options — resume policy, checkpoint cadence, reporting (:data:`OPTION_FIELDS` of the one
  :class:`slmops.stage.RunOptions`). They do not change the trained weights, so they stay out of the
  cache key (a resumed run has the same key as the run it continues); the runner hands them to the
  stage in its context and records them in the artifact's ``meta``.

:func:`make_config` validates a flat mapping (YAML merged with flags) and turns pydantic's errors
into one line that names the flag, e.g. ``--lora-rank 0 is not valid: must be greater than 0``.
CLI flags are the field names with dashes (``lora_rank`` → ``--lora-rank``).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from slmops.errors import ConfigError
from slmops.stage.context import RunOptions

Method = Literal["full", "lora", "dora", "qlora"]
METHODS: tuple[str, ...] = ("full", "lora", "dora", "qlora")
TARGET_KEYWORDS = ("auto", "all-linear")


def flag(field: str) -> str:
    """The CLI flag of a config field (``lora_rank`` → ``--lora-rank``)."""
    return "--" + field.replace("_", "-")


class TrainConfig(BaseModel):
    """Data and training settings shared by every method."""

    model_config = ConfigDict(extra="forbid")

    # -- data ---------------------------------------------------------------------------------
    text_template: str | None = Field(
        None, description="A {field} text template such as '### Q: {input}\\n### A: {output}'; unset = the model's chat template"
    )
    max_length: int | None = Field(
        None, ge=8, description="Longest training sequence in tokens; longer examples are cut and counted (default: model context, at most 2048)"
    )
    packing: bool = Field(False, description="Pack several examples into each sequence (attention stays within each example)")
    train_split: str = Field("train", description="Split of the dataset to train on")
    validation_split: str = Field("validation", description="Split to evaluate on (carved from the training data when missing)")
    validation_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share held out for validation when the dataset has no validation split (seeded, deterministic)"
    )
    # -- optimisation -------------------------------------------------------------------------
    epochs: int = Field(1, ge=1, description="Passes over the training data (ignored when --max-steps is set)")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides --epochs)")
    batch_size: int = Field(8, ge=1, description="Examples per micro-batch (per process)")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated into one optimizer step")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate (AdamW)")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Learning-rate decay after warmup: cosine, linear or constant")
    warmup_steps: int = Field(0, ge=0, description="Steps of linear warmup from 0 to the learning rate")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Warmup as a share of all steps (instead of --warmup-steps)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (not applied to biases and norms)")
    max_grad_norm: float = Field(1.0, ge=0, description="Clip the gradient norm to this value (0 = no clipping)")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass to save memory")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="Autocast precision through accelerate: no, bf16 or fp16")
    seed: int = Field(0, description="Seed of weight init (adapters), data order and dropout")
    # -- evaluation ---------------------------------------------------------------------------
    eval_every: int = Field(0, ge=0, description="Evaluate on the validation split every N steps (0 = only at start and end)")
    eval_batch_size: int | None = Field(None, ge=1, description="Batch size for evaluation (default: --batch-size)")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many evaluations without a validation-loss improvement"
    )
    early_stopping_min_delta: float = Field(0.0, ge=0, description="Smallest validation-loss drop that counts as an improvement")
    restore_best: bool = Field(True, description="With early stopping, end with the weights of the best validation loss")
    overfit_patience: int = Field(
        2, ge=1, description="Warn of overfitting after this many evaluations in a row where validation loss rose while training loss fell"
    )
    eval_generate: bool = Field(False, description="Also measure greedy exact match of the answers on the validation split at the end")
    eval_max_new_tokens: int = Field(32, ge=1, description="Most new tokens per answer for --eval-generate")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.warmup_steps and self.warmup_ratio:
            raise ValueError("give --warmup-steps or --warmup-ratio, not both")
        if self.max_steps is not None and self.warmup_steps >= self.max_steps:
            raise ValueError(f"--warmup-steps {self.warmup_steps} is not below --max-steps {self.max_steps}")
        if self.train_split == self.validation_split:
            raise ValueError("--train-split and --validation-split name the same split")
        return self


class FullConfig(TrainConfig):
    """``finetune.full``: every parameter is trained; the output is a complete model."""

    learning_rate: float = Field(5e-5, gt=0, description="Peak learning rate (AdamW)")


class LoraConfig(TrainConfig):
    """``finetune.lora``: a low-rank adapter on a frozen base; the output is a PEFT adapter folder."""

    adapter_name: str = Field(
        "default", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="Name of this adapter among the base model's adapters"
    )
    lora_rank: int = Field(8, gt=0, le=4096, description="LoRA rank r")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA alpha (scale = alpha / rank); default: 2 × rank")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input")
    target_modules: list[str] = Field(
        default_factory=lambda: ["auto"],
        description="Layers to adapt (comma-separated names): auto (attention + MLP of the architecture), all-linear, or names like q_proj,v_proj",
    )
    modules_to_save: list[str] = Field(
        default_factory=list, description="Modules trained fully and saved with the adapter (comma-separated), e.g. lm_head"
    )

    @field_validator("target_modules", "modules_to_save", mode="before")
    @classmethod
    def _split_commas(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @model_validator(mode="after")
    def _resolve_lora(self) -> LoraConfig:
        if self.lora_alpha is None:
            self.lora_alpha = float(2 * self.lora_rank)
        if not self.target_modules:
            raise ValueError("--target-modules is empty; use auto, all-linear or layer names")
        keywords = [t for t in self.target_modules if t in TARGET_KEYWORDS]
        if keywords and len(self.target_modules) > 1:
            raise ValueError(f"--target-modules {keywords[0]} cannot be combined with other names")
        return self


class DoraConfig(LoraConfig):
    """``finetune.dora``: weight-decomposed LoRA (magnitude + direction); a PEFT adapter with use_dora."""


class QloraConfig(LoraConfig):
    """``finetune.qlora``: LoRA on a 4-bit (bitsandbytes) base; the adapter loads on the fp32 base too."""

    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit quantization of the frozen base: nf4 or fp4")
    double_quant: bool = Field(True, description="Also quantize the quantization constants (saves ~0.4 bit/parameter)")
    compute_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype of the 4-bit layers' matmuls (bfloat16 on GPUs that have it; float32 on CPU)"
    )


CONFIGS: dict[str, type[TrainConfig]] = {"full": FullConfig, "lora": LoraConfig, "dora": DoraConfig, "qlora": QloraConfig}
ALL_FIELDS: tuple[str, ...] = tuple(dict.fromkeys(f for c in CONFIGS.values() for f in c.model_fields))


def stage_name(method: str) -> str:
    return f"finetune.{check_method(method)}"


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"--method {method} is not a fine-tuning method", fix=f"use one of {', '.join(METHODS)}")
    return method


#: The run options (:class:`slmops.stage.RunOptions`) a fine-tune reads: flags and YAML keys beside the config.
OPTION_FIELDS: tuple[str, ...] = ("resume", "save_every", "keep_checkpoints", "keep_run_dir", "report_to")


def _describe(err: Mapping[str, Any], values: Mapping[str, Any]) -> str:
    loc = [str(x) for x in err["loc"]]
    field = loc[0] if loc else ""
    msg = str(err["msg"]).removeprefix("Value error, ")
    if not field:  # a model-level check; its message already names the flags
        return msg
    shown = values.get(field)
    if isinstance(shown, list):
        shown = ",".join(map(str, shown))
    return f"{flag(field)} {shown} is not valid: {msg[:1].lower() + msg[1:]}"


def _unknown(key: str, method: str | None, known: tuple[str, ...], source: str) -> ConfigError:
    if method is not None and key in ALL_FIELDS:
        fits = [m for m, c in CONFIGS.items() if key in c.model_fields]
        return ConfigError(f"{flag(key)} does not apply to --method {method}", fix=f"it is a setting of --method {' or '.join(fits)}; drop it")
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]}?" if close else f"settings are: {', '.join(known)}"
    return ConfigError(f"unknown setting {key!r} in {source}", fix=hint)


def make_config(method: str, values: Mapping[str, Any], *, source: str = "the fine-tuning config") -> TrainConfig:
    """Validate ``values`` as the config of ``method``; one :class:`ConfigError` naming the flag."""
    cls = CONFIGS[check_method(method)]
    known = tuple(cls.model_fields)
    for key in values:
        if key not in known:
            raise _unknown(key, method, known, source)
    try:
        return cls.model_validate(dict(values))
    except ValidationError as exc:
        problems = [_describe(e, values) for e in exc.errors()]
        raise ConfigError(problems[0], why="; ".join(problems[1:]) or None) from None


def make_options(values: Mapping[str, Any], *, source: str = "the run options") -> RunOptions:
    """Validate fine-tuning run options (:data:`OPTION_FIELDS`); one :class:`ConfigError` naming the flag."""
    for key in values:
        if key not in OPTION_FIELDS:
            raise _unknown(key, None, OPTION_FIELDS, source)
    try:
        return RunOptions.model_validate(dict(values))
    except ValidationError as exc:
        problems = [_describe(e, values) for e in exc.errors()]
        raise ConfigError(problems[0], why="; ".join(problems[1:]) or None) from None


def split_settings(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a flat mapping (YAML + flags) into (config values, run-option values)."""
    cfg = {k: v for k, v in values.items() if k not in OPTION_FIELDS}
    opts = {k: v for k, v in values.items() if k in OPTION_FIELDS}
    return cfg, opts
