"""The library calls behind ``slmops finetune`` and ``slmops adapters``: resolve, validate, run the stage.

Every call goes through :func:`slmops.stage.runner.run_stage`, so it is cached by config and
input digests and leaves an artifact with lineage, exactly like a recipe step::

    r = finetune("tiny", "support", method="lora", store=store, config={"max_steps": 50}, name="support-lora")
    merged = merge("tiny", "default", store=store, name="tiny-support")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from slmops.errors import ConfigError
from slmops.finetune.config import make_config, make_options, stage_name
from slmops.stage import RunOptions
from slmops.stage.inputs import resolve_input
from slmops.stage.runner import RunResult, run_stage
from slmops.store.artifact import Artifact
from slmops.store.registry import Store


def _model(ref: str | Artifact, store: Store) -> Artifact:
    return ref if isinstance(ref, Artifact) else resolve_input(ref, store, kind="model")


def finetune(
    model: str | Artifact,
    data: str | Artifact,
    *,
    method: str = "lora",
    config: Mapping[str, Any] | None = None,
    options: RunOptions | Mapping[str, Any] | None = None,
    store: Store,
    name: str | None = None,
    force: bool = False,
) -> RunResult:
    """Fine-tune ``model`` on ``data`` with ``method`` (full, lora, dora, qlora); cached, with lineage."""
    cfg = make_config(method, dict(config or {}))
    base = _model(model, store)
    dataset = data if isinstance(data, Artifact) else resolve_input(data, store, kind="dataset")
    opts = options if isinstance(options, RunOptions) else make_options(dict(options or {}))
    return run_stage(stage_name(method), {"model": base, "data": dataset}, cfg, store=store, output_name=name, force=force, options=opts)


def _adapter(store: Store, base: Artifact, ref: str | Artifact) -> Artifact:
    from slmops.finetune.adapters import find_adapter

    return ref if isinstance(ref, Artifact) else find_adapter(store, base, ref)


def merge(
    base: str | Artifact,
    adapter: str | Artifact,
    *,
    store: Store,
    name: str | None = None,
    dtype: str = "float32",
    allow_other_base: bool = False,
) -> RunResult:
    """Merge ``adapter`` (an adapter name on ``base``, or any adapter reference) into ``base`` → a model."""
    b = _model(base, store)
    a = _adapter(store, b, adapter)
    return run_stage("adapters.merge", {"model": b, "adapter": a}, {"dtype": dtype, "allow_other_base": allow_other_base},
                     store=store, output_name=name)


def combine(
    base: str | Artifact,
    adapters: Sequence[str | Artifact],
    *,
    weights: Sequence[float],
    method: str = "linear",
    svd_rank: int | None = None,
    adapter_name: str = "combined",
    store: Store,
    name: str | None = None,
    allow_other_base: bool = False,
) -> RunResult:
    """Combine two or more adapters of ``base`` into a new adapter (``linear``, ``cat`` or ``svd``)."""
    from slmops.finetune.adapter_stages import ADAPTER_ROLES, MAX_COMBINE

    if not 2 <= len(adapters) <= MAX_COMBINE:
        raise ConfigError(f"combine takes 2 to {MAX_COMBINE} adapters, not {len(adapters)}", fix="name at least two adapters")
    b = _model(base, store)
    arts = [_adapter(store, b, a) for a in adapters]
    inputs: dict[str, Artifact] = {"model": b, **{role: art for role, art in zip(ADAPTER_ROLES, arts, strict=False)}}
    cfg = {"weights": list(weights), "method": method, "svd_rank": svd_rank, "adapter_name": adapter_name, "allow_other_base": allow_other_base}
    return run_stage("adapters.combine", inputs, cfg, store=store, output_name=name)
