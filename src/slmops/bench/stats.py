"""Latency statistics for benchmarks: percentiles, TTFT/TPOT/ITL from token timestamps, SLOs, goodput, slopes.

Definitions follow vLLM's benchmark: TTFT is the time from sending the request to the first output
token; TPOT is ``(latency − TTFT) / (output tokens − 1)`` (undefined for one token); ITL is the gap
between consecutive streamed chunks; end-to-end latency runs to the last token. A request is
*good* when it succeeded and meets every SLO given; goodput is good requests per second.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slmops.errors import ConfigError
from slmops.units import parse_duration

SLO_KEYS = ("ttft", "tpot", "itl", "e2e")


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0–100) with linear interpolation (numpy's default); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """count, mean, min, p50, p95, p99, max of the non-None values."""
    xs = [float(v) for v in values if v is not None]
    return {
        "n": len(xs), "mean": sum(xs) / len(xs) if xs else None, "min": min(xs) if xs else None,
        "p50": percentile(xs, 50), "p95": percentile(xs, 95), "p99": percentile(xs, 99), "max": max(xs) if xs else None,
    }


def tpot(latency: float, ttft: float | None, output_tokens: int) -> float | None:
    """Time per output token after the first: (latency − TTFT) / (output tokens − 1)."""
    if ttft is None or output_tokens < 2:
        return None
    return (latency - ttft) / (output_tokens - 1)


def itls(token_times: Sequence[float]) -> list[float]:
    """Inter-token (inter-chunk) latencies from monotonic timestamps of each token or chunk."""
    return [b - a for a, b in itertools.pairwise(token_times)]


@dataclass(frozen=True)
class RequestTiming:
    """One request's timing (seconds); ``ok`` False for a failed request."""

    ok: bool
    latency: float
    ttft: float | None = None
    output_tokens: int = 0
    prompt_tokens: int | None = None
    itl: tuple[float, ...] = ()
    error: str | None = None

    @property
    def tpot(self) -> float | None:
        return tpot(self.latency, self.ttft, self.output_tokens)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "latency": self.latency, "ttft": self.ttft, "tpot": self.tpot, "output_tokens": self.output_tokens,
                "prompt_tokens": self.prompt_tokens, "itl_mean": sum(self.itl) / len(self.itl) if self.itl else None, "error": self.error}


def parse_slos(texts: Sequence[str]) -> dict[str, float]:
    """``["ttft=500ms", "tpot=50ms"]`` → ``{"ttft": 0.5, "tpot": 0.05}`` (seconds)."""
    out: dict[str, float] = {}
    for text in texts:
        for part in text.split(","):
            key, sep, value = part.partition("=")
            key = key.strip().lower()
            if not sep or key not in SLO_KEYS:
                raise ConfigError(f"--slo {part!r} is not an SLO", fix=f"write KEY=DURATION with KEY one of {', '.join(SLO_KEYS)}, e.g. ttft=500ms")
            out[key] = parse_duration(value, flag=f"--slo {key}")
    return out


def meets_slos(r: RequestTiming, slos: Mapping[str, float]) -> bool:
    """True when the request succeeded and meets every SLO (for ITL: its longest gap)."""
    if not r.ok:
        return False
    checks = {"ttft": r.ttft, "tpot": r.tpot, "e2e": r.latency, "itl": max(r.itl) if r.itl else None}
    for key, limit in slos.items():
        value = checks[key]
        if key in ("ttft", "e2e") and value is None:
            return False
        if value is not None and value > limit:
            return False
    return True


def aggregate(timings: Sequence[RequestTiming], wall_s: float, slos: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Percentiles of TTFT/TPOT/ITL/latency, throughput and (with SLOs) goodput over a set of requests."""
    ok = [t for t in timings if t.ok]
    out_tokens = sum(t.output_tokens for t in ok)
    result: dict[str, Any] = {
        "requests": len(timings), "completed": len(ok), "failed": len(timings) - len(ok), "wall_s": wall_s,
        "total_output_tokens": out_tokens,
        "requests_per_s": len(ok) / wall_s if wall_s > 0 else None,
        "output_tokens_per_s": out_tokens / wall_s if wall_s > 0 else None,
        "ttft_s": summarize(t.ttft for t in ok), "tpot_s": summarize(t.tpot for t in ok),
        "itl_s": summarize(x for t in ok for x in t.itl), "e2e_s": summarize(t.latency for t in ok),
    }
    if slos:
        good = sum(1 for t in timings if meets_slos(t, slos))
        result["slo"] = dict(slos)
        result["good_requests"] = good
        result["goodput_requests_per_s"] = good / wall_s if wall_s > 0 else None
        result["good_fraction"] = good / len(timings) if timings else None
    return result


def linear_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs (0 for fewer than two points or constant xs)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
