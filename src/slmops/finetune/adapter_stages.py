"""Registers the adapter stages: ``adapters.merge`` (adapter → full model) and ``adapters.combine`` (→ new adapter).

Both take the base as input role ``model``; merge takes one ``adapter``, combine takes
``adapter_1`` … ``adapter_8`` (at least two) with one weight each. The work is done by
:mod:`slmops.finetune.adapters`; heavy libraries load only when a stage runs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from slmops.errors import ConfigError
from slmops.stage import StageContext, StageOutput, stage
from slmops.store.artifact import Artifact

MAX_COMBINE = 8
ADAPTER_ROLES = tuple(f"adapter_{i}" for i in range(1, MAX_COMBINE + 1))


class MergeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="dtype of the merged model's saved weights")
    allow_other_base: bool = Field(False, description="Merge even though the adapter was trained on a different base artifact")


class CombineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weights: list[float] = Field(description="One weight per adapter, in order (e.g. 0.7,0.3)")
    method: Literal["linear", "cat", "svd"] = Field(
        "linear", description="linear (same rank; mixes A and B), cat (exact weighted sum; ranks add up) or svd (weighted sum re-factored)"
    )
    svd_rank: int | None = Field(None, gt=0, description="Rank of the result for --method svd (default: the largest input rank)")
    adapter_name: str = Field("combined", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="Name of the new adapter on its base")
    allow_other_base: bool = Field(False, description="Combine even though an adapter was trained on a different base artifact")


@stage("adapters.merge", config=MergeConfig, kind="model", format="hf-safetensors", inputs=("model", "adapter"))
def merge(inputs: dict[str, Artifact], cfg: MergeConfig, ctx: StageContext) -> StageOutput:
    """Merge an adapter into its base: a complete model whose logits match base + adapter."""
    from slmops.finetune.adapters import check_base, merge_adapter

    base, adapter = inputs["model"], inputs["adapter"]
    if adapter.kind != "adapter":
        raise ConfigError(f"sha256:{adapter.short} is a {adapter.kind}, not an adapter", fix="pass an adapter (see `slmops adapters ls BASE`)")
    check_base(adapter, base, allow_other_base=cfg.allow_other_base)
    facts = merge_adapter(base, adapter, ctx.out, dtype=cfg.dtype)
    inherited = {k: base.manifest.meta[k] for k in ("arch", "model_type", "architecture", "parameters", "vocab_size", "context_length", "dims", "tokenizer")
                 if k in base.manifest.meta}
    return StageOutput(metrics={"max_abs_logit_diff": facts["max_abs_logit_diff"]},
                       meta={**inherited, **facts, "base": base.digest, "adapter": adapter.digest})


@stage("adapters.combine", config=CombineConfig, kind="adapter", format="peft", inputs=("model",), optional_inputs=ADAPTER_ROLES)
def combine(inputs: dict[str, Artifact], cfg: CombineConfig, ctx: StageContext) -> StageOutput:
    """Combine two or more adapters of one base into a new adapter (linear, cat or svd)."""
    from slmops.finetune.adapters import check_base, combine_adapters

    base = inputs["model"]
    adapters = [inputs[r] for r in ADAPTER_ROLES if r in inputs]
    if len(adapters) < 2:
        raise ConfigError(f"combining needs at least two adapters (got {len(adapters)})", fix="name two or more adapters")
    if len(cfg.weights) != len(adapters):
        raise ConfigError(f"--weights has {len(cfg.weights)} value(s) for {len(adapters)} adapters", fix="give one weight per adapter, e.g. --weights 0.7,0.3")
    for a in adapters:
        if a.kind != "adapter":
            raise ConfigError(f"sha256:{a.short} is a {a.kind}, not an adapter", fix="pass adapters (see `slmops adapters ls BASE`)")
        check_base(a, base, allow_other_base=cfg.allow_other_base)
    facts = combine_adapters(base, adapters, ctx.out, weights=cfg.weights, method=cfg.method, svd_rank=cfg.svd_rank)
    return StageOutput(metrics={"rank": facts["rank"]}, meta={**facts, "adapter_name": cfg.adapter_name, "base": base.digest})
