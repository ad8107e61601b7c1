"""``compare``: retention by hand, the stored report (JSON, Markdown, HTML with plots), the CLI, and the page in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from slmops.errors import ConfigError
from slmops.report.compare import build_comparison, compare


def fake_eval(metrics: dict[str, float], size: int, params: int, precision: str) -> dict[str, Any]:
    return {"target": {"kind": "local", "size_bytes": size, "parameters": params, "precision": precision, "format": "hf-safetensors"},
            "metrics": metrics, "counts": {"examples": 10}, "data": {"digest": "ab" * 32, "split": "test"}}


def fake_bench(e2e: float, ttft: float, rss: int, tps: float) -> dict[str, Any]:
    s = {"ttft_s": {"p50": ttft}, "tpot_s": {"p50": 0.01}, "e2e_s": {"p50": e2e}, "output_tokens_per_s": tps}
    return {"summary": s, "memory": {"peak_rss_bytes": rss}, "load_s": 1.0, "cells": [{"samples": [{"ttft": ttft, "latency": e2e}]}]}


def test_retention_by_hand() -> None:
    evals = [fake_eval({"accuracy": 1.0, "perplexity": 10.0}, 4000, 1_000_000, "float32"),
             fake_eval({"accuracy": 0.9, "perplexity": 12.0}, 1000, 1_000_000, "int4")]
    benches = [fake_bench(2.0, 0.4, 1000, 10.0), fake_bench(0.5, 0.1, 250, 40.0)]
    rep = build_comparison(["teacher", "student"], evals, benches, ref="teacher")
    vs = rep["rows"][1]["vs_ref"]
    assert vs["latency_reduction_pct"] == pytest.approx(75.0)
    assert vs["ttft_reduction_pct"] == pytest.approx(75.0)
    assert vs["memory_reduction_pct"] == pytest.approx(75.0)
    assert vs["size_reduction_pct"] == pytest.approx(75.0)
    assert vs["speedup"] == pytest.approx(4.0)
    assert vs["retention_pct"] == pytest.approx({"accuracy": 90.0, "perplexity": 100 * 10 / 12})  # lower perplexity is better
    assert rep["rows"][0]["vs_ref"]["retention_pct"] == {"accuracy": 100.0, "perplexity": 100.0}
    assert rep["metrics"] == ["accuracy", "perplexity"] and rep["primary_metric"] == "accuracy"
    with pytest.raises(ConfigError, match="--ref"):
        build_comparison(["a", "b"], evals, benches, ref="c")


def bf16_copy(src: Path, dst: Path) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    dst.mkdir()
    for f in src.iterdir():
        if f.name not in ("manifest.json", "model.safetensors"):
            shutil.copy(f, dst / f.name)
    weights = load_file(src / "model.safetensors")
    save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, dst / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg["dtype"] = "bfloat16"
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.fixture
def two_models(store: Any, model: Any, tmp_path: Path) -> list[str]:
    from slmops.stage.inputs import resolve_input

    small = resolve_input(str(bf16_copy(model.path, tmp_path / "bf16")), store)
    store.add_version("tiny-fp32", model.digest)
    store.add_version("tiny-bf16", small.digest)
    return ["tiny-fp32", "tiny-bf16"]


EVAL = {"metrics": ["token_f1", "perplexity"], "limit": 3, "max_tokens": 4}
BENCH = {"isolate": False, "prompt_tokens": [8], "output_tokens": [4], "repetitions": 3, "warmup": 0}


def test_compare_stores_a_report_with_lineage_and_plots(store: Any, two_models: list[str], intent_data: Any, tmp_path: Path) -> None:
    store.add_version("intents", intent_data.digest)
    r = compare(two_models, "intents", store=store, eval_config=EVAL, bench_config=BENCH, name="cmp")
    art = r.artifact
    rep = json.loads(art.file("report.json").read_text())
    assert rep["ref"] == "tiny-fp32" and [row["label"] for row in rep["rows"]] == two_models
    fp32, bf16 = rep["rows"]
    assert bf16["precision"] == "bfloat16" and fp32["precision"] == "float32"
    assert bf16["size_bytes"] < fp32["size_bytes"] and bf16["vs_ref"]["size_reduction_pct"] > 30
    for row in rep["rows"]:
        assert row["parameters"] and row["peak_rss_bytes"] and row["load_s"] and row["ttft_s"] and row["tpot_s"] and row["tokens_per_s"]
        assert set(row["metrics"]) == {"token_f1", "perplexity"} and len(row["e2e_samples"]) == 3
    assert set(rep["plots"]) == {"quality_vs_size", "tokens_per_s_by_precision", "latency_distribution"}
    roles = sorted(p.role for p in art.manifest.parents)
    assert roles == ["bench0", "bench1", "eval0", "eval1"]
    for p in art.manifest.parents:
        assert store.get(p.digest).kind == "report"
    html = art.file("report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "tokens/s" in html and "tiny-bf16" in html
    md = art.file("report.md").read_text()
    assert "| tiny-fp32 (ref) |" in md and "![Quality vs size](plots/quality_vs_size.png)" in md
    assert (art.path / "plots" / "latency_distribution.png").read_bytes()[:4] == b"\x89PNG"
    again = compare(two_models, "intents", store=store, eval_config=EVAL, bench_config=BENCH)
    assert again.cached and again.digest == r.digest


def test_compare_cli_writes_html_markdown_and_json(run_cli: Any, two_models: list[str], intent_data: Any, tmp_path: Path) -> None:
    from slmops.store.registry import Store

    with Store() as s:  # the CLI's store is this test's store: give the dataset a name there
        s.add_version("intents", intent_data.digest)
    html, md, js = tmp_path / "r.html", tmp_path / "md" / "r.md", tmp_path / "r.json"
    md.parent.mkdir()
    code, out, err = run_cli("compare", *two_models, "--data", "intents", "--ref", "tiny-bf16", "--metrics", "token_f1",
                             "--limit", "2", "--max-tokens", "4", "--prompt-tokens", "8", "--output-tokens", "4", "--repetitions", "2",
                             "--no-isolate", "--title", "fp32 vs bf16", "--html", str(html), "--markdown", str(md),
                             "--report-json", str(js), "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["report"]["ref"] == "tiny-bf16" and d["report"]["title"] == "fp32 vs bf16"
    assert "<title>fp32 vs bf16</title>" in html.read_text()
    assert (md.parent / "plots" / "quality_vs_size.png").is_file() and json.loads(js.read_text())["ref"] == "tiny-bf16"
    code, _, err = run_cli("compare", two_models[0], "--data", "intents")
    assert code == 1 and "at least two" in err


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_the_html_report_shows_its_plots_in_headless_chromium(store: Any, two_models: list[str], intent_data: Any, tmp_path: Path) -> None:
    """Open the stored page as a person would: Chromium renders it and the screenshot has the plots' colours."""
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    from PIL import Image

    store.add_version("intents", intent_data.digest)
    art = compare(two_models, "intents", store=store, eval_config=EVAL, bench_config=BENCH).artifact
    page, shot = tmp_path / "report.html", tmp_path / "shot.png"
    shutil.copy(art.file("report.html"), page)
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                    "--no-first-run", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                    "--window-size=1400,1400", page.as_uri()], check=True, capture_output=True, timeout=90)
    img = Image.open(shot).convert("RGB")
    assert img.size == (1400, 1400)
    pixels = list(img.get_flattened_data() if hasattr(img, "get_flattened_data") else img.getdata())

    def near(rgb: tuple[int, int, int], c: tuple[int, int, int], tol: int = 12) -> bool:
        return all(abs(a - b) <= tol for a, b in zip(rgb, c, strict=True))

    blue = sum(near(p, (0x1F, 0x77, 0xB4)) for p in pixels)  # matplotlib's first colour: points, bars and boxes
    orange = sum(near(p, (0xFF, 0x7F, 0x0E)) for p in pixels)
    assert blue > 500 and orange > 500, (blue, orange)


def test_metrics_keep_the_order_they_were_asked_in() -> None:
    ev = fake_eval({"accuracy": 1.0, "perplexity": 9.0, "judge_relevance": 4.0}, 10, 10, "fp32")
    ev["config"] = {"metrics": ["perplexity", "judge", "accuracy"]}
    rep = build_comparison(["a"], [ev], [None])
    assert rep["metrics"] == ["perplexity", "judge_relevance", "accuracy"] and rep["primary_metric"] == "perplexity"
