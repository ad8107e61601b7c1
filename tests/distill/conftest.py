"""Fixtures for the distillation tests: the scripted teacher server, prompts, and tiny models."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from teacher_server import Script, TeacherServer


@pytest.fixture
def teacher_server() -> Iterator[TeacherServer]:
    server = TeacherServer(Script()).start()
    yield server
    server.stop()


@pytest.fixture
def prompts(store) -> Any:
    """A support-intent prompts dataset (train/validation/test, no answers) of 20 records."""
    from slmops.stage.runner import run_stage

    return run_stage("data.synth", {}, {"task": "support-intent", "n": 20, "prompts_only": True}, store=store).artifact


@pytest.fixture
def http_cfg(teacher_server: TeacherServer) -> dict[str, Any]:
    """The smallest endpoint settings (config and run options, split by :func:`slmops.stage.split_options`): fast retries."""
    return {"base_url": teacher_server.url, "model": "teacher-x", "backoff_base_s": 0.01, "backoff_max_s": 0.05, "request_timeout_s": 5}


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from slmops.store import Store

    s = Store(tmp_path_factory.mktemp("distill_models"))
    yield s
    s.close()


@pytest.fixture(scope="session")
def tiny_pair(model_store) -> dict[str, Any]:
    """A tiny llama teacher, a smaller student with the same tokenizer, and one with another tokenizer."""
    from slmops.testing import tiny_model

    teacher = tiny_model("llama", store=model_store, hidden_size=64, num_layers=2, seed=1)
    student = tiny_model("llama", store=model_store, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=2)
    other = tiny_model("llama", store=model_store, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=1500)
    return {"teacher": teacher, "student": student, "other": other}
