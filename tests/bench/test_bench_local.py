"""The local benchmark on a tiny real model: the grid, warm-up, repetitions, vLLM's TPOT, memory, load time, isolation."""

from __future__ import annotations

from typing import Any

import pytest

from slmops.bench.config import BenchConfig
from slmops.bench.local import bench_runtime
from slmops.bench.prompts import filler_text, prompt_ids
from slmops.evaluate.report import load_report
from slmops.stage.runner import run_stage


def test_prompts_have_the_exact_length(tiny_rt: Any) -> None:
    for n in (1, 7, 64, 300):
        assert len(prompt_ids(tiny_rt, n)) == n
    assert len(filler_text(10).split()) == 10 and filler_text(3, 1) != filler_text(3)


def test_grid_timings_follow_the_definitions(tiny_rt: Any) -> None:
    cfg = BenchConfig(prompt_tokens=[8, 32], output_tokens=[4, 6], warmup=1, repetitions=2)
    seen: list[tuple[int, int]] = []
    res = bench_runtime(tiny_rt, cfg, on_progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (12, 12)  # 4 cells x (1 warm-up + 2 timed)
    assert [(c["prompt_tokens"], c["output_tokens"]) for c in res["cells"]] == [(8, 4), (8, 6), (32, 4), (32, 6)]
    for c in res["cells"]:
        assert c["completed"] == 2 and len(c["samples"]) == 2
        for s in c["samples"]:
            assert s["output_tokens"] == c["output_tokens"] and s["prompt_tokens"] == c["prompt_tokens"]  # ignore_eos: exact lengths
            assert 0 < s["ttft"] <= s["latency"]
            assert s["tpot"] == pytest.approx((s["latency"] - s["ttft"]) / (s["output_tokens"] - 1))
        assert c["itl_s"]["n"] == 2 * (c["output_tokens"] - 1)
        assert c["ttft_s"]["p50"] <= c["ttft_s"]["p99"]
        assert c["output_tokens_per_s"] == pytest.approx(2 * c["output_tokens"] / sum(s["latency"] for s in c["samples"]))
    assert res["summary"]["completed"] == 8
    assert res["memory"]["peak_rss_bytes"] >= res["memory"]["rss_after_bytes"] > 0


def test_cells_beyond_the_context_are_skipped(tiny_rt: Any) -> None:
    res = bench_runtime(tiny_rt, BenchConfig(prompt_tokens=[500], output_tokens=[4, 64], warmup=0, repetitions=1))
    assert "completed" in res["cells"][0] and "exceed the context" in res["cells"][1]["skipped"]


def test_bench_stage_in_process_and_isolated(store: Any, model: Any) -> None:
    cfg = {"prompt_tokens": [8], "output_tokens": [4], "warmup": 1, "repetitions": 2}
    here = run_stage("bench", {"model": model}, {**cfg, "isolate": False}, store=store).artifact
    rep = load_report(here)
    assert [p.role for p in here.manifest.parents] == ["model"] and here.kind == "report"
    assert rep["memory"]["isolated"] is False and rep["load_s"] > 0 and rep["size_bytes"] == model.manifest.size_bytes
    assert rep["target"]["parameters"] == model.manifest.metrics["parameters"]
    m = here.manifest.metrics
    assert {"ttft_p50_s", "tpot_p50_s", "output_tokens_per_s", "peak_rss_bytes", "load_s", "size_bytes"} <= set(m)
    assert run_stage("bench", {"model": model}, {**cfg, "isolate": False}, store=store).cached  # same machine, same config

    iso = load_report(run_stage("bench", {"model": model}, cfg, store=store).artifact)
    assert iso["memory"]["isolated"] is True and iso["runtime"] == "torch"
    assert iso["memory"]["peak_rss_bytes"] >= iso["memory"]["rss_model_bytes"] > 0
    assert iso["summary"]["completed"] == 2
