"""Output for the CLI: JSON or rich tables on stdout, messages and progress bars on stderr.

Both consoles print text **literally**: rich markup and emoji codes are off, so a name, path, CSV
header or model answer holding ``[/red]`` or ``:x:`` prints as typed and can never break the
output. A line that wants style says so: ``out.print(f"[bold]{esc(name)}[/]", markup=True)``,
escaping every value it did not write itself with :func:`esc`, or builds a :class:`rich.text.Text`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from slmops.progress import use_sink

out = Console(soft_wrap=True, markup=False, emoji=False)
err = Console(stderr=True, soft_wrap=True, markup=False, emoji=False)


def esc(value: Any) -> str:
    """``value`` as text that prints literally inside a line printed with ``markup=True``."""
    return escape(str(value))


def warn(message: Any) -> None:
    """A ``warning:`` line on stderr; the message prints literally."""
    err.print(Text.assemble(("warning:", "yellow"), " ", str(message)))


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
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[fields]}", markup=False),
        console=err,
        transient=False,
    )
    with progress, use_sink(RichSink(progress)):
        yield
