"""Shared fixtures: every test gets its own SLMOPS_HOME and runs with the hub switched off."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def slmops_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("slmops_home")
    monkeypatch.setenv("SLMOPS_HOME", str(home))
    return home


@pytest.fixture
def store(slmops_home: Path):
    from slmops.store import Store

    s = Store(slmops_home)
    yield s
    s.close()
