"""How busy the machine was with *other* work while a benchmark ran, and how much the timed runs varied.

Speed measured while other processes compete for the CPUs is not the model's speed. :class:`Contention`
brackets a measurement: the CPU time the whole machine spent busy (``psutil.cpu_times``) minus the
CPU time of this process and its finished children (``os.times``; an isolated benchmark's worker is
one) is the work of others, expressed in cores over the wall time. :func:`reliability` combines it
with the spread of the repeated runs into the ``reliability`` block of a bench report: the numbers,
whether they can be trusted, and why not.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any, Self

#: Other work above this many cores (or this share of the CPUs, whichever is larger) makes speed unreliable.
BUSY_CORES, BUSY_SHARE = 0.5, 0.25
#: Repeated runs whose end-to-end latency differs by more than this (% of the median) are unreliable.
MAX_SPREAD_PCT = 20.0


def _busy_s() -> float | None:
    try:
        import psutil

        t = psutil.cpu_times()
    except Exception:  # noqa: BLE001 - no psutil or no /proc: unknown
        return None
    # user includes guest time on Linux, so guest fields are not added again; steal is other VMs' use of this CPU
    return float(t.user + t.system + sum(getattr(t, k, 0.0) for k in ("nice", "irq", "softirq", "steal")))


def _own_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Contention:
    """A context manager measuring other processes' CPU use (in cores) while the block runs."""

    def __enter__(self) -> Self:
        self.wall0, self.busy0, self.own0 = time.monotonic(), _busy_s(), _own_s()
        self.other_cores: float | None = None
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self.wall0
        busy1 = _busy_s()
        if self.busy0 is None or busy1 is None or wall <= 0:
            return
        self.other_cores = max(0.0, ((busy1 - self.busy0) - (_own_s() - self.own0)) / wall)


def spread_pct(cells: Sequence[dict[str, Any]]) -> float | None:
    """The median over grid cells of (slowest − fastest) / median end-to-end latency of the timed runs, in %."""
    spreads = []
    for c in cells:
        lat = sorted(s["latency"] for s in c.get("samples", []) if s.get("latency"))
        if len(lat) >= 2:
            mid = lat[len(lat) // 2] if len(lat) % 2 else (lat[len(lat) // 2 - 1] + lat[len(lat) // 2]) / 2
            spreads.append(100.0 * (lat[-1] - lat[0]) / mid if mid > 0 else 0.0)
    if not spreads:
        return None
    spreads.sort()
    return spreads[len(spreads) // 2]


def reliability(other_cores: float | None, cells: Sequence[dict[str, Any]], cpus: int | None = None) -> dict[str, Any]:
    """The ``reliability`` block of a bench report: other work (cores), run-to-run spread (%), ``reliable`` and the reasons."""
    cpus = cpus or os.cpu_count() or 1
    spread = spread_pct(cells)
    why = []
    limit = max(BUSY_CORES, BUSY_SHARE * cpus)
    if other_cores is not None and other_cores > limit:
        why.append(f"other processes kept {other_cores:.1f} of {cpus} CPU cores busy during the measurement")
    if spread is not None and spread > MAX_SPREAD_PCT:
        why.append(f"repeated runs differed by {spread:.0f}% of their median latency")
    return {"other_cores": None if other_cores is None else round(other_cores, 3), "cpus": cpus,
            "spread_pct": None if spread is None else round(spread, 1), "reliable": not why, "why": why}
