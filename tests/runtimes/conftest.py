"""Tiny real models for the runtime tests, made by ``slmops.testing.tiny`` (``models.init``).

Built once per session into a store of their own: Llama, Qwen2 and Phi-3 at hidden 64, 2 layers,
with byte-level BPE tokenizers trained in code and their chat templates. Weights are random
(seeded), so next-token distributions are flat, which is what the sampling tests want.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

ARCHES = ("llama", "qwen2", "phi3")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from slmops.store.registry import Store
    from slmops.testing.tiny import tiny_model

    store = Store(tmp_path_factory.mktemp("runtimes_store"))
    try:
        yield {arch: tiny_model(arch, store=store) for arch in ARCHES}
    finally:
        store.close()


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_models: dict[str, Any]) -> Any:
    """The Llama model's folder (a plain Hugging Face folder plus manifest.json)."""
    return tiny_models["llama"].path


@pytest.fixture(scope="session")
def runtimes(tiny_models: dict[str, Any]) -> Iterator[dict[str, Any]]:
    from slmops.runtimes import open_runtime

    rts = {arch: open_runtime(art) for arch, art in tiny_models.items()}
    yield rts
    for rt in rts.values():
        rt.close()


@pytest.fixture(scope="session")
def torch_rt(runtimes: dict[str, Any]) -> Any:
    return runtimes["llama"]


@pytest.fixture(scope="session")
def tiny_tokenizer(torch_rt: Any) -> Any:
    return torch_rt.tokenizer
