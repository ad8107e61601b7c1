"""Speed and memory of one model on one runtime: load time, TTFT, decode tokens/s, peak RSS.

:func:`measure_runtime` opens the model, warms it up, and times a few greedy generations of a
fixed length (EOS ignored) from a fixed prompt with the benchmark's timing (``bench.local.time_one``); :func:`measure_in_subprocess` runs it in a fresh
Python process (:func:`slmops.bench.worker.run_fresh`, with the engine imported before the timed
load), so the peak RSS is that model's alone and not whatever the calling process loaded before.
Used by the optimizer and the benchmarks.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from slmops.bench.memory import peak_rss_bytes

PROMPT_TEXT = (
    "The small model reads the question, thinks about the facts it was given, and answers in one short sentence. "
    "Every answer is checked against the reference, and the scores are written to the report. "
)


def measure_runtime(path: str | Path, *, runtime: str = "auto", prompt_tokens: int = 64, new_tokens: int = 64, runs: int = 3,
                    options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Timings of ``path`` on ``runtime`` (medians over ``runs``), plus this process's peak RSS.

    Each run is the benchmark's own timed request (:func:`slmops.bench.local.time_one`: streamed,
    stamped per token), so TTFT and decode speed (1 / TPOT) mean here what they mean in ``bench``.
    """
    from slmops.bench.local import time_one
    from slmops.runtimes import open_runtime

    t0 = time.perf_counter()
    rt = open_runtime(Path(path), runtime, **(options or {}))
    load_s = time.perf_counter() - t0
    try:
        base = rt.tokenize(PROMPT_TEXT, add_special_tokens=True)
        ids = (base * (prompt_tokens // max(1, len(base)) + 1))[:prompt_tokens]
        time_one(rt, ids, 4)  # warm-up
        timings = [time_one(rt, ids, new_tokens) for _ in range(max(1, runs))]
    finally:
        rt.close()
    return {
        "runtime": getattr(rt, "name", runtime),
        "load_s": load_s,
        "ttft_s": statistics.median(t.ttft or 0.0 for t in timings),
        "decode_tokens_per_s": statistics.median(1.0 / t.tpot if t.tpot else float("nan") for t in timings),
        "prompt_tokens": len(ids),
        "new_tokens": new_tokens,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def measure_in_subprocess(path: str | Path, *, timeout_s: float = 900, **kwargs: Any) -> dict[str, Any]:
    """:func:`measure_runtime` in a fresh interpreter (its peak RSS is the model's own)."""
    from slmops.bench.worker import run_fresh

    return run_fresh("slmops.export.measure:measure_fresh", {"path": str(path), **kwargs}, label=f"measure {Path(path).name[:12]}",
                     timeout_s=timeout_s, fix="measure it in this process (optimize --no-isolate) to see the full error")


def measure_fresh(path: str, runtime: str = "auto", **kwargs: Any) -> dict[str, Any]:
    """The fresh process's body: import the engine first (so ``load_s`` is the model's), then :func:`measure_runtime`."""
    from slmops.bench.local import warm_engine

    warm_engine(Path(path), runtime)
    return measure_runtime(path, runtime=runtime, **kwargs)
