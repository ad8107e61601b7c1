"""Recipe actions: steps that make no artifact (``alias``, ``serve-smoke``), looked up by name.

An action is ``fn(spec, target, store) -> detail text``. Packages above the pipeline register their
own with :func:`action` (``serve-smoke`` lives in :mod:`slmops.serve.smoke`), and are imported by
name on first lookup, as stage modules are, so the pipeline never imports the server.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from slmops.errors import ConfigError

if TYPE_CHECKING:
    from slmops.pipeline.recipe import StepSpec
    from slmops.store.artifact import Artifact
    from slmops.store.registry import Store

#: Action implementations: (step spec, target artifact, store) -> detail text.
ActionFn = Callable[["StepSpec", "Artifact", "Store"], str]

#: Modules that register the actions defined above the pipeline (imported on first lookup).
BUILTIN_ACTION_MODULES = ("slmops.serve.smoke",)

_ACTIONS: dict[str, ActionFn] = {}
_loaded = False


def action(name: str) -> Callable[[ActionFn], ActionFn]:
    """Register ``fn`` as the recipe action ``name``."""

    def register(fn: ActionFn) -> ActionFn:
        _ACTIONS[name] = fn
        return fn

    return register


def get_action(name: str) -> ActionFn:
    global _loaded
    if name not in _ACTIONS and not _loaded:
        for module in BUILTIN_ACTION_MODULES:
            importlib.import_module(module)
        _loaded = True
    if name not in _ACTIONS:
        raise ConfigError(f"unknown action {name!r}", fix=f"use one of: {', '.join(sorted(_ACTIONS))}")
    return _ACTIONS[name]


@action("alias")
def _alias(spec: StepSpec, target: Artifact, store: Store) -> str:
    name, _, alias = (spec.alias or "").partition("@")
    version = store.add_version(name, target.digest)
    store.set_alias(name, alias, version)
    return f"{name}@{alias} -> {name}:{version}"
