"""The stage registry: a stage is a plain function registered under a dotted name with a config.

    @stage("data.split", config=SplitConfig, kind="dataset", format="jsonl", inputs=("data",))
    def split(inputs: dict[str, Artifact], cfg: SplitConfig, ctx: StageContext) -> StageOutput | None: ...

The function writes its output files into ``ctx.out`` (a temp dir inside the store) and may return a
:class:`StageOutput` with metrics and facts for the manifest. It never registers anything itself:
the runner does that. Built-in stage modules are imported lazily, so ``import slmops`` stays light.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from slmops.errors import ConfigError
from slmops.store.artifact import Artifact, canonical_json

if TYPE_CHECKING:
    from slmops.stage.context import StageContext

#: Modules that register the built-in stages (imported on first lookup).
BUILTIN_STAGE_MODULES = (
    "slmops.data.stages",
    "slmops.data.synth.stage",
    "slmops.data.prose",
    "slmops.models.stages",
    "slmops.distill.stages",
    "slmops.finetune.stages",
    "slmops.finetune.adapter_stages",
    "slmops.evaluate.stages",
    "slmops.bench.stages",
    "slmops.report.stages",
    "slmops.export.stages_gguf",
    "slmops.export.stages_eval",
    "slmops.export.stages_onnx",
    "slmops.monitor.fromlogs",
    "slmops.monitor.drift_run",
    "slmops.monitor.sample",
)


@dataclass
class StageOutput:
    """What a stage tells the runner about the files it wrote."""

    metrics: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    kind: str | None = None
    format: str | None = None


StageFn = Callable[[dict[str, Artifact], Any, "StageContext"], "StageOutput | None"]


@dataclass(frozen=True)
class Stage:
    name: str
    fn: StageFn
    config: type[BaseModel]
    kind: str
    format: str
    version: int = 1
    inputs: tuple[str, ...] = ()
    optional_inputs: tuple[str, ...] = ()
    fingerprint: Callable[[Any], str] | None = None
    description: str = ""

    def make_config(self, data: BaseModel | dict[str, Any] | None, *, where: str | None = None) -> BaseModel:
        if isinstance(data, self.config):
            return data
        if isinstance(data, BaseModel):
            data = data.model_dump()
        return validate_config(self.config, data or {}, where=where or f"stage {self.name}")


_REGISTRY: dict[str, Stage] = {}
_loaded = False


def stage(
    name: str,
    *,
    config: type[BaseModel],
    kind: str,
    format: str,
    version: int = 1,
    inputs: tuple[str, ...] = (),
    optional_inputs: tuple[str, ...] = (),
    fingerprint: Callable[[Any], str] | None = None,
) -> Callable[[StageFn], StageFn]:
    """Register ``fn`` as stage ``name``. Bump ``version`` when its output for a config changes."""

    def deco(fn: StageFn) -> StageFn:
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = Stage(name, fn, config, kind, format, version, inputs, optional_inputs, fingerprint, doc[0] if doc else "")
        return fn

    return deco


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        for module in BUILTIN_STAGE_MODULES:
            importlib.import_module(module)
        _loaded = True


def get_stage(name: str) -> Stage:
    _load_builtin()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown stage {name!r}", fix=f"use one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def all_stages() -> dict[str, Stage]:
    _load_builtin()
    return dict(sorted(_REGISTRY.items()))


def validate_config(model: type[BaseModel], data: dict[str, Any], *, where: str) -> BaseModel:
    """Validate ``data`` against ``model``; a failure becomes one :class:`ConfigError` naming each field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(config)"
            msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{loc}: {msg}")
        allowed = ", ".join(model.model_fields)
        raise ConfigError(f"invalid config for {where}", why="; ".join(problems), fix=f"fields are: {allowed}") from exc


def cache_key(st: Stage, cfg: BaseModel, inputs: dict[str, Artifact]) -> str:
    """``sha256(stage, stage version, canonical config, input digests, fingerprint)``: the one cache key."""
    payload: dict[str, Any] = {
        "stage": st.name,
        "version": st.version,
        "config": cfg.model_dump(mode="json"),
        "inputs": {role: art.digest for role, art in sorted(inputs.items())},
    }
    if st.fingerprint is not None:
        payload["fingerprint"] = st.fingerprint(cfg)
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()
