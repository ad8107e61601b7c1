"""Session-scoped tiny models (one per architecture) built once in their own store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

ARCHES = ("llama", "qwen2", "phi3")


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from slmops.store import Store

    s = Store(tmp_path_factory.mktemp("models_store"))
    yield s
    s.close()


@pytest.fixture(scope="session")
def tiny_models(model_store) -> dict[str, object]:
    """arch -> Artifact of a tiny random model (tokenizer trained on the built-in corpus)."""
    from slmops.testing import tiny_model

    return {arch: tiny_model(arch, store=model_store, name=f"tiny-{arch}") for arch in ARCHES}


@pytest.fixture(scope="session")
def loaded(tiny_models) -> dict[str, tuple[object, object]]:
    """arch -> (model, tokenizer) loaded back with transformers."""
    from slmops.models import load_model_and_tokenizer

    return {arch: load_model_and_tokenizer(art) for arch, art in tiny_models.items()}


@pytest.fixture
def saved_folder(tiny_models, tmp_path: Path) -> Path:
    """A plain HF folder (no manifest) copied from the tiny llama, as a user would have on disk."""
    import shutil

    dst = tmp_path / "hf-llama"
    shutil.copytree(tiny_models["llama"].path, dst, ignore=shutil.ignore_patterns("manifest.json"))
    return dst
