"""Registers the ``bench`` stage: a speed report artifact for a local model (linked to it) or a URL.

A benchmark measures this machine now, so its cache key includes a fingerprint of the machine
(CPU, cores, memory): a cached result is only reused on the same kind of machine, and the CLI
re-measures unless asked to reuse (``--reuse``).
"""

from __future__ import annotations

import json
import logging
import os
import platform
from typing import Any

from slmops import formats
from slmops.bench.config import BenchConfig
from slmops.errors import ConfigError
from slmops.stage import StageContext, StageOutput, stage
from slmops.store.artifact import Artifact

log = logging.getLogger(__name__)

SCHEMA = "slmops.bench/1"


def machine_fingerprint(_cfg: Any = None) -> str:
    """CPU model, core count and total memory: results measured elsewhere are not reused here."""
    import psutil

    from slmops.sysinfo import cpu_features

    return f"{cpu_features().get('model', platform.processor())}|{os.cpu_count()}|{psutil.virtual_memory().total // 2**30}GiB"


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The flat numbers a bench report is compared by (pooled over the grid, or the highest concurrency level)."""
    if report.get("levels"):
        top = max(report["levels"], key=lambda lv: (lv["output_tokens_per_s"] or 0))
        s = top
    else:
        s = report["summary"]
    out = {"ttft_p50_s": s["ttft_s"]["p50"], "tpot_p50_s": s["tpot_s"]["p50"], "itl_p50_s": s["itl_s"]["p50"],
           "e2e_p50_s": s["e2e_s"]["p50"], "e2e_p95_s": s["e2e_s"]["p95"], "output_tokens_per_s": s["output_tokens_per_s"]}
    if report.get("levels"):
        out.update(requests_per_s=s["requests_per_s"], concurrency=s["concurrency"], goodput_requests_per_s=s.get("goodput_requests_per_s"))
    else:
        out.update(peak_rss_bytes=report["memory"]["peak_rss_bytes"], load_s=report["load_s"], size_bytes=report["size_bytes"])
    rel = report.get("reliability")
    if rel:
        out.update(speed_reliable=rel["reliable"], spread_pct=rel["spread_pct"], other_cores=rel["other_cores"])
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Benchmark", ""]
    if report.get("levels"):
        lines += ["| prompt words | output | concurrency | req/s | tok/s | TTFT p50 ms | TPOT p50 ms | e2e p95 s | goodput req/s | failed |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for lv in report["levels"]:
            lines.append(f"| {lv['prompt_words']} | {lv['output_tokens']} | {lv['concurrency']} | {_f(lv['requests_per_s'])} | "
                         f"{_f(lv['output_tokens_per_s'])} | {_ms(lv['ttft_s']['p50'])} | {_ms(lv['tpot_s']['p50'])} | "
                         f"{_f(lv['e2e_s']['p95'])} | {_f(lv.get('goodput_requests_per_s'))} | {lv['failed']} |")
    else:
        m = report["memory"]
        lines += [(f"Load {report['load_s']:.2f} s, size {report['size_bytes'] / 2**20:.1f} MiB, peak RSS {m['peak_rss_bytes'] / 2**20:.0f} MiB "
                   f"({'own process' if m.get('isolated') else 'shared process'})."), "",
                  "| prompt | output | TTFT p50 ms | TPOT p50 ms | ITL p99 ms | e2e p50 s | tok/s |", "|---|---|---|---|---|---|---|"]
        for c in report["cells"]:
            if c.get("skipped"):
                lines.append(f"| {c['prompt_tokens']} | {c['output_tokens']} | skipped: {c['skipped']} | | | | |")
                continue
            lines.append(f"| {c['prompt_tokens']} | {c['output_tokens']} | {_ms(c['ttft_s']['p50'])} | {_ms(c['tpot_s']['p50'])} | "
                         f"{_ms(c['itl_s']['p99'])} | {_f(c['e2e_s']['p50'])} | {_f(c['output_tokens_per_s'])} |")
        rel = report.get("reliability")
        if rel:
            lines += ["", f"Other work on the machine: {_f(rel['other_cores'])} of {rel['cpus']} cores; run-to-run spread "
                          f"{_f(rel['spread_pct'])}% of the median latency." + ("" if rel["reliable"] else " **Unreliable:** " + "; ".join(rel["why"]) + ".")]
    return "\n".join(lines) + "\n"


def _f(v: float | None) -> str:
    return "–" if v is None else f"{v:.3g}"


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v * 1000:.1f}"


@stage("bench", config=BenchConfig, kind="report", format="bench-report", optional_inputs=("model",), fingerprint=machine_fingerprint)
def bench_stage(inputs: dict[str, Artifact], cfg: BenchConfig, ctx: StageContext) -> StageOutput:
    """Measure speed: TTFT, TPOT, ITL, latency percentiles, tokens/s, peak RSS, load time, size (local or over HTTP)."""
    from slmops.bench.local import bench_in_process, bench_isolated

    model = inputs.get("model")
    if (model is None) == (cfg.url is None):
        raise ConfigError("give a model or --url to benchmark (one of them)", fix="slmops bench MODEL, or slmops bench --url http://host:port/v1")
    if cfg.url:
        from slmops.bench.http import bench_http

        report: dict[str, Any] = bench_http(cfg)
    else:
        assert model is not None
        if model.kind not in formats.runnable_kinds():
            raise ConfigError(f"artifact {model.short} is a {model.kind}, not a model", fix=f"benchmark a {', '.join(formats.runnable_kinds())} artifact")
        from slmops.bench.contention import Contention, reliability
        from slmops.bench.facts import model_facts

        facts = model_facts(model)
        run = bench_isolated if cfg.isolate else bench_in_process
        with Contention() as busy:
            report = run(model.path, cfg, size_bytes=facts["size_bytes"])
        report["reliability"] = reliability(busy.other_cores, report.get("cells", []))
        for why in report["reliability"]["why"]:
            log.warning("speed of sha256:%s may be unreliable: %s", model.short, why)
        report["target"] = {"kind": "local", **facts, "runtime": report.get("runtime")}
    report.update(schema=SCHEMA, config=cfg.model_dump(mode="json"), machine=machine_fingerprint())
    (ctx.out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    (ctx.out / "report.md").write_text(markdown(report), encoding="utf-8")
    flat = {k: v for k, v in headline(report).items() if v is not None}
    return StageOutput(metrics=flat, meta={"target": report["target"], "machine": report["machine"]})
