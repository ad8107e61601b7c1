"""Recipe actions: steps that make no artifact (``alias``, ``serve-smoke``), looked up by name.

An action is ``fn(spec, target, store) -> detail text``, registered with :func:`action` together
with the pydantic model of its ``config:`` (checked with the rest of the recipe before anything runs,
by :func:`action_config`). Packages above the pipeline register their own (``serve-smoke`` lives in
:mod:`slmops.serve.smoke`) and are imported by name on first lookup, as stage modules are, so the
pipeline never imports the server.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from slmops.errors import ConfigError

if TYPE_CHECKING:
    from slmops.pipeline.recipe import StepSpec
    from slmops.store.artifact import Artifact
    from slmops.store.registry import Store

#: Action implementations: (step spec, target artifact, store) -> detail text.
ActionFn = Callable[["StepSpec", "Artifact", "Store"], str]

#: Modules that register the actions defined above the pipeline (imported on first lookup).
BUILTIN_ACTION_MODULES = ("slmops.serve.smoke",)

_ACTIONS: dict[str, tuple[ActionFn, type[BaseModel] | None]] = {}
_loaded = False


def action(name: str, *, config: type[BaseModel] | None = None) -> Callable[[ActionFn], ActionFn]:
    """Register ``fn`` as the recipe action ``name``; ``config`` validates its ``config:`` (None: it takes none)."""

    def register(fn: ActionFn) -> ActionFn:
        _ACTIONS[name] = (fn, config)
        return fn

    return register


def _lookup(name: str) -> tuple[ActionFn, type[BaseModel] | None]:
    global _loaded
    if name not in _ACTIONS and not _loaded:
        for module in BUILTIN_ACTION_MODULES:
            importlib.import_module(module)
        _loaded = True
    if name not in _ACTIONS:
        raise ConfigError(f"unknown action {name!r}", fix=f"use one of: {', '.join(sorted(_ACTIONS))}")
    return _ACTIONS[name]


def get_action(name: str) -> ActionFn:
    return _lookup(name)[0]


def action_config(name: str, data: dict[str, Any], where: str) -> BaseModel | None:
    """The validated ``config:`` of an action step; an unknown or bad key is a :class:`ConfigError` naming it."""
    model = _lookup(name)[1]
    if model is None:
        if data:
            raise ConfigError(f"{where}: action {name} takes no config", fix="remove config: from the step")
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{where}, config: {'.'.join(map(str, err['loc']))}: {err['msg']}",
                          fix=f"{name} takes {', '.join(model.model_fields)}") from exc


@action("alias")
def _alias(spec: StepSpec, target: Artifact, store: Store) -> str:
    name, _, alias = (spec.alias or "").partition("@")
    version = store.add_version(name, target.digest)
    store.set_alias(name, alias, version)
    return f"{name}@{alias} -> {name}:{version}"
