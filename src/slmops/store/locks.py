"""Run locks: one process per resumable run folder (``$SLMOPS_HOME/runs/<key>/``).

A training run or a teacher's generation keeps its work in a folder keyed by its inputs; two
processes on the same folder would interleave checkpoints or answers. :func:`run_lock` takes an
exclusive advisory lock (``flock``) on ``folder/lock`` and writes the holder's pid there; the OS
drops it when the holder exits, even by SIGKILL, so a crashed run never blocks its resume.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from slmops.errors import ConfigError


@contextlib.contextmanager
def run_lock(folder: Path, *, activity: str, fix: str, enabled: bool = True) -> Iterator[None]:
    """Hold ``folder``'s lock; a second holder gets a ConfigError naming the first one's pid.

    ``activity`` completes "another process (pid N) is …" (e.g. "training this exact run");
    ``fix`` says what to do instead. ``enabled=False`` is a no-op (non-main data-parallel ranks).
    """
    if not enabled:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks, run unguarded
        yield
        return
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise ConfigError(f"another process (pid {holder}) is {activity}", why=f"{folder} is locked", fix=fix) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing drops the flock
