"""The HTTP load generator against real servers on 127.0.0.1: streamed timings, concurrency, SLO goodput, time bounds."""

from __future__ import annotations

import time
from typing import Any

import pytest

from slmops.bench.config import BenchConfig
from slmops.bench.http import bench_http
from slmops.evaluate.report import load_report
from slmops.stage.runner import run_stage


def test_load_levels_against_a_real_model_server(tiny_server: str) -> None:
    cfg = BenchConfig(url=tiny_server, prompt_tokens=[16], output_tokens=[6], concurrency=[1, 2], requests=4, warmup=1,
                      ignore_eos=True, slo={"ttft": 5.0, "tpot": 1.0})
    res = bench_http(cfg)
    assert res["target"] == {"kind": "http", "url": tiny_server, "model": "tiny-llama"}
    assert [lv["concurrency"] for lv in res["levels"]] == [1, 2]
    for lv in res["levels"]:
        assert lv["requests"] == 4 and lv["completed"] == 4 and lv["failed"] == 0, lv["first_error"]
        assert lv["total_output_tokens"] == 4 * 6  # the server's usage report: exactly 6 tokens each (ignore_eos)
        assert lv["prompt_tokens_reported"] and lv["prompt_tokens_reported"] > 16
        assert lv["requests_per_s"] > 0 and lv["output_tokens_per_s"] > 0
        assert 0 < lv["ttft_s"]["p50"] <= lv["e2e_s"]["p50"]
        assert lv["tpot_s"]["n"] == 4 and lv["itl_s"]["n"] > 0
        assert lv["good_requests"] == 4 and lv["goodput_requests_per_s"] == pytest.approx(lv["requests_per_s"])
        for s in lv["samples"]:
            assert s["tpot"] == pytest.approx((s["latency"] - s["ttft"]) / (s["output_tokens"] - 1))


def test_ttft_and_itl_reflect_the_server_pace_and_slos_cut_goodput() -> None:
    from oai_server import make_app, serve

    # 5 words at 30 ms each: TTFT >= 30 ms, ITL about 30 ms
    with serve(make_app(script=lambda m: "one two three four five", model_id="paced", token_delay=0.03)) as url:
        res = bench_http(BenchConfig(url=url, prompt_tokens=[4], output_tokens=[8], concurrency=[2], requests=4, warmup=0,
                                     slo={"ttft": 0.001}))
    lv = res["levels"][0]
    assert lv["completed"] == 4 and lv["total_output_tokens"] == 20
    assert lv["ttft_s"]["min"] >= 0.025 and 0.02 <= lv["itl_s"]["p50"] <= 0.2
    assert lv["good_requests"] == 0 and lv["goodput_requests_per_s"] == 0.0  # nobody meets a 1 ms TTFT


def test_the_load_generator_stops_at_its_time_limit() -> None:
    from oai_server import make_app, serve

    with serve(make_app(script=lambda m: " ".join(["w"] * 50), model_id="slow", token_delay=0.05)) as url:
        t0 = time.perf_counter()
        res = bench_http(BenchConfig(url=url, prompt_tokens=[4], output_tokens=[50], concurrency=[2], requests=40, warmup=0,
                                     max_duration_s=1.0))
        took = time.perf_counter() - t0
    lv = res["levels"][0]
    assert took < 6 and lv["requests"] == 40
    assert lv["failed"] >= 30 and lv["first_error"] == "cancelled at the time limit"


def test_bench_stage_over_http_links_nothing_but_records_the_url(store: Any, label_server: str) -> None:
    art = run_stage("bench", {}, {"url": label_server, "concurrency": [1], "requests": 2, "warmup": 0}, store=store).artifact
    rep = load_report(art)
    assert art.manifest.parents == [] and rep["target"]["url"] == label_server and rep["levels"][0]["completed"] == 2
    assert art.manifest.metrics["requests_per_s"] > 0 and (art.path / "report.md").read_text().startswith("# Benchmark")


def test_bench_cli(run_cli: Any, label_server: str) -> None:
    import json

    code, out, err = run_cli("bench", "--url", label_server, "--concurrency", "1,2", "--requests", "3", "--warmup", "0",
                             "--slo", "ttft=2s", "--max-duration", "30s", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert [lv["concurrency"] for lv in d["report"]["levels"]] == [1, 2] and not d["cached"]
    code, out, err = run_cli("bench", "--url", label_server, "--concurrency", "1", "--requests", "2", "--slo", "ttft=fast")
    assert code == 1 and "--slo ttft" in err
    code, out, err = run_cli("bench", "--url", label_server, "--concurrency", "1", "--requests", "2", "--warmup", "0")
    assert code == 0 and "labeller @" in out
