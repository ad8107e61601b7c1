"""Fixtures for the fine-tuning tests: one store per session with tiny models and the built-in task.

Trainings are tiny (hidden 64, 2 layers, ~100 examples, a dozen steps), and identical runs are
cache hits, so tests that need "a trained LoRA adapter" share one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

#: Settings that make a tiny run learn something in a few seconds on 2 CPU cores.
FAST = {"max_steps": 12, "batch_size": 8, "learning_rate": 5e-3}
FAST_FULL = {"max_steps": 12, "batch_size": 8, "learning_rate": 2e-3}


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread, and do not stall when other processes share the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="session")
def ft_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from slmops.store import Store

    s = Store(tmp_path_factory.mktemp("finetune_store"))
    yield s
    s.close()


@pytest.fixture(scope="session")
def base(ft_store: Any) -> Any:
    from slmops.testing.tiny import tiny_model

    with one_thread():
        return tiny_model("llama", store=ft_store, name="tiny-llama")


@pytest.fixture(scope="session")
def task(ft_store: Any) -> Any:
    from slmops.stage.runner import run_stage

    return run_stage("data.synth", {}, {"task": "support-intent", "n": 120}, store=ft_store, output_name="support").artifact


@pytest.fixture(scope="session")
def lora_adapter(ft_store: Any, base: Any, task: Any) -> Any:
    """A LoRA adapter (rank 8) trained on the tiny llama; shared by the adapter tests."""
    from slmops.finetune.api import finetune

    with one_thread():
        return finetune(base, task, method="lora", config=FAST, store=ft_store, name="support-lora").artifact


def make_home_with(store_home: Any) -> Any:
    """A Store at ``store_home`` holding a tiny llama (``tiny``) and the task (``support``), for CLI and subprocess tests."""
    from slmops.stage.runner import run_stage
    from slmops.store import Store
    from slmops.testing.tiny import tiny_model

    s = Store(store_home)
    with one_thread():
        tiny_model("llama", store=s, name="tiny")
    run_stage("data.synth", {}, {"task": "support-intent", "n": 120}, store=s, output_name="support")
    return s
