"""Speed measured under CPU contention is flagged: the bench report says how busy the machine was, compare warns."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from test_report_compare import fake_bench, fake_eval

from slmops.bench.contention import Contention, reliability
from slmops.report.compare import build_comparison


def test_other_processes_cpu_use_is_measured_and_flags_the_numbers() -> None:
    burners = [subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 6: pass"]) for _ in range(2)]
    try:
        time.sleep(0.5)
        with Contention() as busy:
            time.sleep(2.0)  # this process idles: whatever the CPUs did was someone else's work
    finally:
        for p in burners:
            p.kill()
            p.wait()
    assert busy.other_cores is not None and busy.other_cores > 0.9
    rel = reliability(busy.other_cores, [{"samples": [{"latency": 1.0}, {"latency": 1.05}]}], cpus=2)
    assert rel["reliable"] is False and "CPU cores busy" in rel["why"][0] and rel["spread_pct"] == 4.9  # (1.05 - 1.0) / 1.025


def test_compare_warns_about_unreliable_rows_and_differences_within_the_spread() -> None:
    evals = [fake_eval({"accuracy": 0.75}, 500, 100, "float32"), fake_eval({"accuracy": 0.75}, 500, 100, "float32"),
             fake_eval({"accuracy": 0.7}, 100, 100, "q4")]
    benches: list[Any] = [fake_bench(1.0, 0.2, 1000, 10.0), fake_bench(0.9, 0.2, 1000, 11.0), fake_bench(0.3, 0.1, 300, 30.0)]
    benches[0]["reliability"] = reliability(0.1, [{"samples": [{"latency": 0.9}, {"latency": 1.0}, {"latency": 1.2}]}], cpus=2)
    benches[1]["reliability"] = reliability(1.6, [{"samples": [{"latency": 0.85}, {"latency": 0.9}, {"latency": 0.95}]}], cpus=2)
    benches[2]["reliability"] = reliability(0.0, [{"samples": [{"latency": 0.3}, {"latency": 0.31}]}], cpus=2)
    rep = build_comparison(["fp32", "same-arch", "q4"], evals, benches, ref="fp32")
    w = rep["warnings"]
    assert any(x.startswith("same-arch: speed unreliable") and "1.6 of 2 CPU cores" in x for x in w)
    assert any(x.startswith("same-arch: its 10% latency difference") and "within the runs' own spread (30%)" in x for x in w)
    assert not any(x.startswith("q4") for x in w), "a 70% reduction measured calmly is a real difference"

    from slmops.report.html import render_markdown

    assert "> **warning:** same-arch: speed unreliable" in render_markdown(rep)
