"""Memory and disk facts for benchmarks: a background RSS sampler, the process's peak RSS, size on disk."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Self


def current_rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def lifetime_peak_rss() -> int | None:
    """The process's peak RSS since it started, in bytes; None where unavailable.

    Linux: ``VmHWM`` from ``/proc/self/status`` — ``ru_maxrss`` survives ``fork`` + ``exec``, so a
    child started from a big parent would report the parent's peak. Elsewhere ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def peak_rss_bytes() -> int:
    """:func:`lifetime_peak_rss`, 0 where unavailable."""
    return lifetime_peak_rss() or 0


class RssSampler:
    """Samples this process's RSS every ``interval`` seconds on a daemon thread; ``peak`` is the largest seen."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = current_rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, current_rss())

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss())


def dir_size(path: Path) -> int:
    """Bytes of every file under ``path`` (or of the file itself)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            p = Path(dirpath) / name
            if not p.is_symlink():
                total += p.stat().st_size
    return total
