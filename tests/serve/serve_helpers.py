"""Helpers shared by the server tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any


class SlowRuntime:
    """A runtime whose tokens each take ``delay`` seconds (counts tokens made and streams running)."""

    name = "slow-test"

    def __init__(self, inner: Any, delay: float) -> None:
        self.inner = inner
        self.delay = delay
        self.capabilities = replace(inner.capabilities, batching=False)  # served one request at a time, every token slowed
        self.generated = 0
        self.active = 0
        self._lock = threading.Lock()

    def __getattr__(self, item: str) -> Any:
        return getattr(self.inner, item)

    def stream(self, prompt: Any, params: Any = None, *, adapter: str | None = None) -> Iterator[Any]:
        inner = self.inner.stream(prompt, params, adapter=adapter)

        def gen() -> Iterator[Any]:
            with self._lock:
                self.active += 1
            try:
                for ev in inner:
                    time.sleep(self.delay)
                    self.generated += 1
                    yield ev
            finally:
                inner.close()
                with self._lock:
                    self.active -= 1

        return gen()

    def close(self) -> None:
        self.inner.close()


def wait_until(cond: Any, timeout: float = 5.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return bool(cond())


CHAT = [{"role": "user", "content": "What is a small model?"}]


class SlowEngine:
    """Wraps a server engine (keeping its slots, so batching still applies) so each token takes ``delay`` seconds."""

    def __init__(self, inner: Any, delay: float) -> None:
        self.inner = inner
        self.delay = delay
        self.runtime = inner.runtime
        self.slots = inner.slots

    def __getattr__(self, item: str) -> Any:
        return getattr(self.inner, item)

    def stream(self, ids: Any, params: Any, adapter: Any) -> Iterator[Any]:
        inner = self.inner.stream(ids, params, adapter)

        def gen() -> Iterator[Any]:
            try:
                for ev in inner:
                    time.sleep(self.delay)
                    yield ev
            finally:
                inner.close()

        return gen()
