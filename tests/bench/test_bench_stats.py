"""Benchmark statistics by hand: percentiles, TPOT (vLLM's definition), ITL, SLOs and goodput, slopes."""

from __future__ import annotations

import pytest

from slmops.bench.stats import RequestTiming, aggregate, itls, linear_slope, meets_slos, parse_slos, percentile, summarize, tpot
from slmops.errors import ConfigError


def test_percentiles_interpolate_like_numpy() -> None:
    np = pytest.importorskip("numpy")
    xs = [0.3, 0.1, 0.4, 0.2]
    assert percentile(xs, 50) == pytest.approx(0.25)
    assert percentile(list(range(1, 101)), 95) == pytest.approx(95.05)
    for q in (50, 95, 99):
        assert percentile([5.0, 1.0, 9.0, 2.0, 7.0], q) == pytest.approx(float(np.percentile([5, 1, 9, 2, 7], q)))
    assert percentile([], 50) is None
    s = summarize([1.0, None, 3.0])
    assert s["n"] == 2 and s["mean"] == 2.0 and s["p50"] == 2.0 and s["max"] == 3.0


def test_tpot_and_itl() -> None:
    # latency 1.0 s, first token at 0.2 s, 5 tokens: (1.0 - 0.2) / 4
    assert tpot(1.0, 0.2, 5) == pytest.approx(0.2)
    assert tpot(1.0, 0.2, 1) is None and tpot(1.0, None, 5) is None
    assert itls([0.0, 0.1, 0.3, 0.6]) == pytest.approx([0.1, 0.2, 0.3])
    t = RequestTiming(ok=True, latency=0.6, ttft=0.1, output_tokens=3, itl=(0.2, 0.3))
    assert t.tpot == pytest.approx(0.25) and t.to_dict()["itl_mean"] == pytest.approx(0.25)


def test_slos_and_goodput() -> None:
    slos = parse_slos(["ttft=500ms,tpot=50ms", "e2e=2s"])
    assert slos == {"ttft": 0.5, "tpot": 0.05, "e2e": 2.0}
    fast = RequestTiming(ok=True, latency=1.0, ttft=0.2, output_tokens=21, itl=(0.04,) * 20)  # tpot 0.04
    slow_first = RequestTiming(ok=True, latency=1.5, ttft=0.7, output_tokens=21)
    failed = RequestTiming(ok=False, latency=0.1, error="HTTP 503")
    assert meets_slos(fast, slos) and not meets_slos(slow_first, slos) and not meets_slos(failed, slos)
    agg = aggregate([fast, slow_first, failed], wall_s=2.0, slos=slos)
    assert agg["completed"] == 2 and agg["failed"] == 1
    assert agg["requests_per_s"] == pytest.approx(1.0)
    assert agg["output_tokens_per_s"] == pytest.approx(21.0)
    assert agg["good_requests"] == 1 and agg["goodput_requests_per_s"] == pytest.approx(0.5)
    assert agg["good_fraction"] == pytest.approx(1 / 3)
    assert agg["ttft_s"]["p50"] == pytest.approx(0.45)
    with pytest.raises(ConfigError, match="--slo"):
        parse_slos(["latency=1s"])
    with pytest.raises(ConfigError, match="--slo ttft"):
        parse_slos(["ttft=fast"])


def test_linear_slope() -> None:
    assert linear_slope([0, 1, 2, 3], [1, 3, 5, 7]) == pytest.approx(2.0)
    assert linear_slope([0, 1, 2, 3], [5, 5, 5, 5]) == 0.0
    assert linear_slope([1], [1]) == 0.0
    assert linear_slope([0, 1, 2], [0, 2, 1]) == pytest.approx(0.5)
