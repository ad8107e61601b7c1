"""Output for the CLI: JSON or rich tables on stdout, messages and progress bars on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from slmops.progress import use_sink

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def emit(data: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    """Print ``data`` as JSON when ``--json`` was given, else through ``human``."""
    if as_json:
        emit_json(data)
    else:
        human(data)


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class RichSink:
    """A progress sink (see :mod:`slmops.progress`) drawing rich bars on stderr."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.ids: dict[int, TaskID] = {}

    def start(self, task_id: int, description: str, total: float | None) -> None:
        self.ids[task_id] = self.progress.add_task(description, total=total, fields="")

    def update(self, task_id: int, completed: float, fields: dict[str, Any]) -> None:
        text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        self.progress.update(self.ids[task_id], completed=completed, fields=text)

    def finish(self, task_id: int) -> None:
        tid = self.ids.pop(task_id, None)
        if tid is not None:
            self.progress.stop_task(tid)


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[None]:
    """Show library progress as rich bars on stderr (disabled for --json or a non-terminal stderr)."""
    if not enabled:
        yield
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[fields]}"),
        console=err,
        transient=False,
    )
    with progress, use_sink(RichSink(progress)):
        yield
