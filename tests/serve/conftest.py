"""Fixtures for the server tests: a store with two versions of a tiny model and a LoRA adapter, and real servers.

``serve_home`` is built once per session: ``bot:1`` and ``bot:2`` (tiny Llamas with different
seeds, ``bot@prod`` → 1, ``bot@canary`` → 2) and ``bot-lora`` (a PEFT LoRA on ``bot:1`` with
random, non-zero weights, committed as an ``adapter`` artifact whose ``model`` parent is the base).
``start_server(**config)`` runs uvicorn on 127.0.0.1 on a free port in a thread and returns a
handle with its URL, app and service; every server stops at the end of its test.
``slow_opener(delay)`` opens runtimes wrapped in ``serve_helpers.SlowRuntime`` (each token takes a
fixed time), for queue, disconnect and timeout tests that must not depend on the machine's speed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def serve_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import peft

    from slmops.runtimes import open_runtime
    from slmops.store import Parent, Store
    from slmops.testing.tiny import tiny_model

    home = tmp_path_factory.mktemp("serve_home")
    with Store(home) as store:
        v1 = tiny_model("llama", store=store, name="bot")
        tiny_model("llama", store=store, name="bot", seed=1)
        store.set_alias("bot", "prod", 1)
        store.set_alias("bot", "canary", 2)
        rt = open_runtime(v1)
        cfg = peft.LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        model = peft.get_peft_model(rt.model, cfg)
        with store.staging() as tmp:
            model.save_pretrained(tmp)
            (tmp / "README.md").unlink(missing_ok=True)
            store.commit(tmp, kind="adapter", format="peft", parents=[Parent(digest=v1.digest, role="model")], name="bot-lora")
        rt.close()
    return home


@dataclass
class Server:
    url: str
    app: Any
    store: Any

    @property
    def service(self) -> Any:
        return self.app.state.service

    def client(self, api_key: str = "none", **kw: Any) -> Any:
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, **kw)

    def entry(self, label: str) -> Any:
        return next(e for e in self.service.pool.entries.values() if e.label == label)


@contextlib.contextmanager
def _servers(serve_home: Path, log_dir: Path) -> Iterator[Any]:
    from slmops.serve import ServeConfig, create_app
    from slmops.store import Store
    from slmops.testing.server import running_server

    with contextlib.ExitStack() as stack:

        def start(opener: Any = None, **cfg: Any) -> Server:
            cfg.setdefault("request_log", log_dir / "requests.db")
            store = stack.enter_context(Store(serve_home))
            app = create_app(ServeConfig(**cfg), store=store, opener=opener)
            url = stack.enter_context(running_server(app))
            return Server(url, app, store)

        yield start


@pytest.fixture
def start_server(serve_home: Path, tmp_path: Path) -> Iterator[Any]:
    """``start_server(**ServeConfig fields)`` → a running :class:`Server`, stopped after the test."""
    with _servers(serve_home, tmp_path) as start:
        yield start


@pytest.fixture(scope="module")
def module_servers(serve_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Like ``start_server`` but the servers live for the whole module (for read-only tests)."""
    with _servers(serve_home, tmp_path_factory.mktemp("serve_logs")) as start:
        yield start


@pytest.fixture
def slow_opener() -> Any:
    """``opener(delay)`` → (opener for create_app, list of the SlowRuntimes it made)."""

    def make(delay: float) -> tuple[Any, list[Any]]:
        from serve_helpers import SlowRuntime

        from slmops.runtimes import open_runtime

        made: list[SlowRuntime] = []

        def opener(artifact: Any, runtime: str = "auto") -> Any:
            rt = SlowRuntime(open_runtime(artifact, runtime=runtime), delay)
            made.append(rt)
            return rt

        return opener, made

    return make
