"""Output for the CLI: JSON or rich tables on stdout, messages and progress bars on stderr.

Both consoles print text **literally**: rich markup and emoji codes are off, so a name, path, CSV
header or model answer holding ``[/red]`` or ``:x:`` prints as typed and can never break the
output. A line that wants style says so: ``out.print(f"[bold]{esc(name)}[/]", markup=True)``,
escaping every value it did not write itself with :func:`esc`, or builds a :class:`rich.text.Text`.

Progress is drawn as rich bars on a terminal, and as plain lines (:class:`PlainSink`) when stderr
is a file or a pipe (``| tee``, nohup, CI): one line when a task starts, then one every
``SLMOPS_PROGRESS_INTERVAL`` seconds (default 10) or every 10% of the work, whichever comes first,
and one when it ends.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from slmops.progress import use_sink
from slmops.units import format_bytes

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
    return format_bytes(n)


def fits(table: Any, console: Console | None = None) -> bool:
    """Whether ``table`` prints at its natural width (no cell cut to "…") on ``console``."""
    console = console or out
    return Measurement.get(console, console.options.update_width(10_000), table).maximum <= console.width


def fitted_tables(head: list[str], body: list[list[str]], *, title: str | None = None, console: Console | None = None) -> list[Table]:
    """One table, columns as given, when it fits the terminal; otherwise turned on its side.

    Sideways, each column of ``head`` (after the first) is a row and each row of ``body`` a column named
    by its first cell, split into as many tables as it takes for every value to print whole (80 columns).
    """
    console = console or out
    wide = Table(title=title)
    for i, h in enumerate(head):
        wide.add_column(h, justify="left" if i == 0 else "right")
    for row in body:
        wide.add_row(*row)
    if fits(wide, console):
        return [wide]
    name_w = max(len(h) for h in head[1:]) if len(head) > 1 else 8
    widths = [max([len(row[0])] + [len(c) for c in row[1:]]) for row in body]
    groups: list[list[int]] = [[]]
    used = name_w + 4
    for i, w in enumerate(widths):
        if groups[-1] and used + w + 3 > console.width:
            groups.append([])
            used = name_w + 4
        groups[-1].append(i)
        used += w + 3
    tables = []
    for n, group in enumerate(groups):
        t = Table(title=title if n == 0 else None)
        t.add_column(head[0], justify="left", overflow="fold")
        for i in group:
            t.add_column(body[i][0], justify="right", overflow="fold")
        for j, h in enumerate(head[1:], start=1):
            t.add_row(h, *[body[i][j] for i in group])
        tables.append(t)
    return tables


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


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _fields_text(fields: dict[str, Any]) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())


class PlainSink:
    """A progress sink writing plain lines (no cursor movement) for logs: at intervals of time or of work."""

    def __init__(self, write: Callable[[str], None], *, interval_s: float | None = None, step_pct: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.write = write
        if interval_s is None:
            try:
                interval_s = float(os.environ.get("SLMOPS_PROGRESS_INTERVAL", "10"))
            except ValueError:
                interval_s = 10.0
        self.interval_s, self.step_pct, self.clock = max(0.0, interval_s), step_pct, clock
        self.tasks: dict[int, dict[str, Any]] = {}

    def _line(self, t: dict[str, Any], completed: float, fields: dict[str, Any], end: str = "") -> str:
        elapsed = self.clock() - t["t0"]
        total = t["total"]
        if total:
            pct = 100.0 * completed / total
            head = f"{completed:g}/{total:g} ({pct:.0f}%)"
            if 0 < completed < total:
                head += f", {_clock(elapsed)} elapsed, ~{_clock(elapsed * (total - completed) / completed)} left"
            else:
                head += f", {_clock(elapsed)}"
        else:
            head = f"{completed:g} done, {_clock(elapsed)}"
        extra = _fields_text(fields)
        return f"{t['description']}: {head}{end}" + (f"  {extra}" if extra else "")

    def start(self, task_id: int, description: str, total: float | None) -> None:
        now = self.clock()
        self.tasks[task_id] = {"description": description, "total": total, "t0": now, "last_t": now, "last_pct": 0.0,
                               "completed": 0.0, "fields": {}, "written": None}
        self.write(f"{description}: started" + (f" ({total:g} steps)" if total else ""))

    def update(self, task_id: int, completed: float, fields: dict[str, Any]) -> None:
        t = self.tasks.get(task_id)
        if t is None:
            return
        t["completed"], t["fields"] = completed, fields
        now = self.clock()
        pct = 100.0 * completed / t["total"] if t["total"] else None
        due = now - t["last_t"] >= self.interval_s or (pct is not None and pct - t["last_pct"] >= self.step_pct)
        if due and completed != t["written"] and not (t["total"] and completed >= t["total"]):  # the end line says it
            self.write(self._line(t, completed, fields))
            t["last_t"], t["written"] = now, completed
            if pct is not None:
                t["last_pct"] = pct - pct % self.step_pct

    def finish(self, task_id: int) -> None:
        t = self.tasks.pop(task_id, None)
        if t is not None:
            self.write(self._line(t, t["completed"], t["fields"], end=", finished"))


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[None]:
    """Show library progress on stderr: rich bars on a terminal, plain lines at intervals otherwise (nothing for --json)."""
    if not enabled:
        yield
        return
    if not err.is_terminal:
        def write(line: str) -> None:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

        with use_sink(PlainSink(write)):
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
