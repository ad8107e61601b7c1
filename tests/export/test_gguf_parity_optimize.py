"""The parity report (any two runtimes) and the optimizer (build, check, measure, choose)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from slmops.errors import ConfigError
from slmops.evaluate.metrics import token_f1
from slmops.export.optimize import OptimizeConfig, parse_target
from slmops.export.parity import ParityConfig, check_parity, measure_parity
from slmops.runtimes import open_runtime
from slmops.stage.runner import run_stage
from slmops.units import parse_size


def test_parity_report_links_both_and_passes(gstore: Any, tiny: dict[str, Any], f32: dict[str, Any], dataset: Any) -> None:
    r = run_stage("parity", {"candidate": f32["llama"], "reference": tiny["llama"], "data": dataset}, {"max_texts": 8, "greedy_prompts": 4}, store=gstore)
    art = r.artifact
    assert art.kind == "report" and {p.role: p.digest for p in art.manifest.parents} == {
        "candidate": f32["llama"].digest, "reference": tiny["llama"].digest, "data": dataset.digest}
    m = art.manifest.metrics
    assert m["passed"] is True and m["kl_mean"] < 1e-5 and m["top1_agreement"] == 1.0 and abs(m["ppl_increase"]) < 1e-3
    assert m["greedy_match"] == 1.0 and m["tokenizer_match"] == 1.0 and m["texts_scored"] == 8
    report = json.loads((art.path / "report.json").read_text())
    assert report["runtimes"] == {"candidate": "llamacpp", "reference": "torch"}
    assert {g["name"]: (g["threshold"], g["passed"]) for g in report["gates"]} == {
        "max_kl": (0.25, True), "min_top1": (0.7, True), "min_greedy_match": (0.5, True), "max_task_drop": (0.05, True)}
    assert "| kl_mean |" in (art.path / "report.md").read_text()


def test_parity_measures_chats_tasks_and_gates(tiny256: Any, gstore: Any, dataset: Any) -> None:
    from slmops.data.io import read_dataset

    q4 = run_stage("export.gguf", {"model": tiny256}, {"qtype": "q4_k_m"}, store=gstore).artifact
    records = [r for r in read_dataset(dataset) if r.kind != "text"]  # instructions (with answers) and a chat
    cfg = ParityConfig(max_texts=5, greedy_prompts=5, max_kl=1e-9, min_top1=0.5, max_ppl_increase=1.0, min_greedy_match=0.0, max_task_drop=1.0)
    with open_runtime(tiny256) as ref, open_runtime(q4) as cand:
        m = measure_parity(cand, ref, records, cfg)
    assert m["texts_scored"] == 5 and m["greedy_compared"] == 5 and m["task_records"] == 5
    assert 0 < m["kl_mean"] < 0.1 and m["kl_p95"] >= m["kl_mean"] and 0 <= m["top1_agreement"] <= 1
    gates = {g.name: g.passed for g in check_parity(m, cfg)}
    assert gates == {"max_kl": False, "min_top1": True, "max_ppl_increase": True, "min_greedy_match": True, "max_task_drop": True}
    assert m["task_drop"] == -m["task_delta"]
    # the task score is eval's token F1 (SQuAD normalisation: case, punctuation and articles do not count)
    assert token_f1("big cat sat", "The big cat!") == pytest.approx(0.8) and token_f1("", "") == 1.0


def test_optimize_chooses_the_smallest_passing(gstore: Any, tiny256: Any, dataset: Any) -> None:
    cfg = {"targets": ["gguf:q8_0", "gguf:q4_k_m", "gguf:f16"], "max_kl": 0.02, "max_size_bytes": "3MB",
           "parity_texts": 2, "greedy_prompts": 1, "bench_new_tokens": 8, "bench_runs": 1, "isolate": False}
    r = run_stage("optimize", {"model": tiny256, "data": dataset}, cfg, store=gstore)
    rows = {row["target"]: row for row in r.artifact.manifest.meta["rows"]}
    assert rows["gguf:f16"]["passed"] is False and "size" in rows["gguf:f16"]["failed"][0]  # 3.4 MB > 3 MB
    passing = [t for t, row in rows.items() if row["passed"]]
    smallest = min(passing, key=lambda t: rows[t]["size_bytes"])
    assert r.artifact.manifest.metrics["chosen"] == smallest and rows[smallest]["chosen"]
    for t in ("gguf:q8_0", "gguf:q4_k_m"):
        row = rows[t]
        assert row["decode_tokens_per_s"] > 0 and row["peak_rss_bytes"] > 0 and row["kl_mean"] is not None and row["parity_report"]
    assert "**chosen**" in (r.artifact.path / "report.md").read_text()
    again = run_stage("optimize", {"model": tiny256, "data": dataset}, cfg, store=gstore)
    assert again.cached


def test_optimize_isolates_measurements_and_skips_missing_exporters(gstore: Any, tiny: dict[str, Any], dataset: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import slmops.stage as stages

    real = stages.all_stages
    monkeypatch.setattr(stages, "all_stages", lambda: {k: v for k, v in real().items() if k != "export.onnx"})
    cfg = {"targets": ["gguf:q8_0", "onnx:int4"], "max_kl": None, "parity_texts": 2, "greedy_prompts": 0, "bench_new_tokens": 4, "bench_runs": 1}
    rows = run_stage("optimize", {"model": tiny["llama"], "data": dataset}, cfg, store=gstore).artifact.manifest.meta["rows"]
    assert rows[0]["chosen"] and 0 < rows[0]["peak_rss_bytes"] < 400e6  # the child's own memory, not the test process's
    assert rows[1]["status"] == "skipped" and "export.onnx is not registered" in rows[1]["message"]


def test_config_parsing() -> None:
    assert parse_size("500MB") == 500_000_000 and parse_size("1.5GiB") == int(1.5 * 2**30) and parse_size(1234) == 1234
    assert parse_target(" GGUF:Q4_K_M ") == ("gguf", "q4_k_m")
    with pytest.raises(ConfigError, match="--targets entry 'gguf:q9'"):
        parse_target("gguf:q9")
    with pytest.raises(ConfigError, match="not FORMAT:TYPE"):
        parse_target("q4_k_m")
    assert OptimizeConfig(max_size_bytes="2kb").max_size_bytes == 2000
    with pytest.raises(ValueError, match="not a size"):
        OptimizeConfig(max_size_bytes="lots")
