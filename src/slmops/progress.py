"""Progress reporting from library code without printing.

Library code calls :func:`task` to get a :class:`Task` and advances it; whoever drives the library
(the CLI installs a rich progress bar) sets a :class:`ProgressSink` with :func:`use_sink`. With no
sink installed, progress goes to the ``slmops.progress`` logger at debug level.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator
from typing import Any, Protocol, Self

log = logging.getLogger("slmops.progress")


class ProgressSink(Protocol):
    def start(self, task_id: int, description: str, total: float | None) -> None: ...
    def update(self, task_id: int, completed: float, fields: dict[str, Any]) -> None: ...
    def finish(self, task_id: int) -> None: ...


class _LogSink:
    def start(self, task_id: int, description: str, total: float | None) -> None:
        log.debug("start %s (total=%s)", description, total)

    def update(self, task_id: int, completed: float, fields: dict[str, Any]) -> None:
        pass

    def finish(self, task_id: int) -> None:
        log.debug("finished task %d", task_id)


_sink: contextvars.ContextVar[ProgressSink] = contextvars.ContextVar("slmops_progress", default=_LogSink())  # noqa: B039 - stateless
_counter = iter(range(1, 1 << 62))


class Task:
    """One unit of long work; ``advance`` moves it, ``fields`` carry extra columns (loss, tok/s)."""

    def __init__(self, description: str, total: float | None) -> None:
        self.id = next(_counter)
        self.completed = 0.0
        self.sink = _sink.get()
        self.sink.start(self.id, description, total)

    def advance(self, n: float = 1, **fields: Any) -> None:
        self.completed += n
        self.sink.update(self.id, self.completed, fields)

    def set(self, completed: float, **fields: Any) -> None:
        self.completed = completed
        self.sink.update(self.id, completed, fields)

    def close(self) -> None:
        self.sink.finish(self.id)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def task(description: str, total: float | None = None) -> Task:
    """Start a progress task (use as a context manager)."""
    return Task(description, total)


@contextlib.contextmanager
def use_sink(sink: ProgressSink) -> Iterator[None]:
    token = _sink.set(sink)
    try:
        yield
    finally:
        _sink.reset(token)
