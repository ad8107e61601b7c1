"""Fixtures for the data tests."""

from __future__ import annotations

import importlib

import pytest


@pytest.fixture
def data_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make sure the data stages are registered for the runner.

    ``slmops.pipeline.stages`` imports every built-in stage module on first lookup; while a sibling
    module (``slmops.models.stages``) is not written yet, register ours and mark the built-ins loaded.
    """
    from slmops.pipeline import stages

    importlib.import_module("slmops.data.stages")
    for module in stages.BUILTIN_STAGE_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            monkeypatch.setattr(stages, "_loaded", True)
