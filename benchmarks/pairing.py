"""Paired speed ratios for the benchmarks: ours vs the raw engine, back to back on one loaded model.

A change in machine load between two processes moves tokens/s by tens of percent on a shared
machine; two generations run back to back in one process see nearly the same load. Alternating
which goes first cancels what drift is left.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable


def paired_ratio(ours: Callable[[], float], raw: Callable[[], float], pairs: int) -> dict[str, float]:
    """Median, min and max of ``ours() / raw()`` over ``pairs`` pairs (after one warm-up pair), alternating the order."""
    ratios = []
    for i in range(pairs + 1):
        if i % 2:
            a, b = ours(), raw()
        else:
            b = raw()
            a = ours()
        if i:
            ratios.append(a / b)
    return {"ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios), "pairs": len(ratios)}


def decode_rate(result: object) -> float:
    """Decode tokens/s after the first token of a :class:`~slmops.runtimes.base.GenerationResult`."""
    return (result.completion_tokens - 1) / ((result.total_s or 0.0) - (result.ttft_s or 0.0))  # type: ignore[attr-defined]
