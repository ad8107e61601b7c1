"""Session fixtures for the GGUF tests: tiny models, their f32 GGUF exports, a LoRA adapter and a dataset.

Everything lives in one session store (built once): Llama, Qwen2 and Phi-3 at hidden 64 (fast,
but too narrow for K-quants, so llama.cpp falls back per tensor), a Llama at hidden 256 /
intermediate 512 whose tensors quantize to real Q4_K/Q6_K, a PEFT LoRA with random non-zero
weights registered as an ``adapter`` artifact of the tiny Llama, and a small mixed dataset.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ggufkit import ARCHES, make_lora, register_adapter, write_jsonl


@pytest.fixture(scope="session")
def gstore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from slmops.store import Store

    s = Store(tmp_path_factory.mktemp("gguf_store"))
    yield s
    s.close()


@pytest.fixture(scope="session")
def tiny(gstore: Any) -> dict[str, Any]:
    from slmops.testing.tiny import tiny_model

    return {arch: tiny_model(arch, store=gstore) for arch in ARCHES}


@pytest.fixture(scope="session")
def tiny256(gstore: Any) -> Any:
    """A Llama whose rows are multiples of 256, so K-quants apply to every matrix."""
    from slmops.testing.tiny import tiny_model

    return tiny_model("llama", store=gstore, hidden_size=256, intermediate_size=512, num_heads=4)


@pytest.fixture(scope="session")
def f32(gstore: Any, tiny: dict[str, Any]) -> dict[str, Any]:
    from slmops.stage.runner import run_stage

    return {arch: run_stage("export.gguf", {"model": m}, {"qtype": "f32"}, store=gstore).artifact for arch, m in tiny.items()}


@pytest.fixture(scope="session")
def dataset(gstore: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Texts, instruction records (with answers) and a chat: what parity and imatrix read."""
    from slmops.stage.runner import run_stage
    from slmops.testing.tiny import tiny_corpus

    rows: list[dict[str, Any]] = [{"text": t} for t in tiny_corpus(24)]
    rows += [{"input": f"what is {i} plus one?", "output": str(i + 1)} for i in range(4)]
    rows.append({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"}]})
    path = write_jsonl(tmp_path_factory.mktemp("data") / "parity.jsonl", rows)
    return run_stage("data.import", {}, {"path": str(path)}, store=gstore).artifact


@pytest.fixture(scope="session")
def lora(gstore: Any, tiny: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """(PeftModel, adapter artifact) on the tiny Llama."""
    folder = tmp_path_factory.mktemp("lora") / "adapter"
    pm = make_lora(tiny["llama"], "llama", folder)
    return pm, register_adapter(gstore, folder, tiny["llama"])


@pytest.fixture
def hf_copy(tiny: dict[str, Any], tmp_path: Path) -> Any:
    """A writable copy of a tiny model's folder (no manifest), to break on purpose."""
    import shutil

    def copy(arch: str = "llama") -> Path:
        dst = tmp_path / f"hf-{arch}"
        shutil.copytree(tiny[arch].path, dst, ignore=shutil.ignore_patterns("manifest.json"))
        return dst

    return copy
