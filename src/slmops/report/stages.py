"""Registers the ``compare`` stage: eval and bench reports in, one comparison report (JSON, Markdown, HTML, plots) out."""

from __future__ import annotations

import json
import re

from pydantic import BaseModel, ConfigDict, Field

from slmops.errors import ConfigError
from slmops.report.compare import MAX_MODELS
from slmops.stage import StageContext, StageOutput, stage
from slmops.store.artifact import Artifact

ROLES = tuple(f"{kind}{i}" for i in range(MAX_MODELS) for kind in ("eval", "bench"))


class CompareConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: list[str] = Field(description="One label per compared model, in input order (eval0/bench0 is the first)")
    ref: str | None = Field(None, description="Label of the reference model for retention columns")
    title: str = Field("Model comparison", description="Title of the HTML and Markdown report")


@stage("compare", config=CompareConfig, kind="report", format="compare-report", optional_inputs=ROLES)
def compare_stage(inputs: dict[str, Artifact], cfg: CompareConfig, ctx: StageContext) -> StageOutput:
    """Compare models side by side (size, memory, speed, quality, retention vs a reference) with plots."""
    from slmops.evaluate.report import load_report
    from slmops.report.compare import build_comparison
    from slmops.report.html import render_html, render_markdown
    from slmops.report.plots import all_plots

    n = len(cfg.labels)
    missing = [f"eval{i}" for i in range(n) if f"eval{i}" not in inputs]
    extra = [r for r in inputs if int(re.sub(r"^[a-z]+", "", r)) >= n]
    if missing or extra or n < 1:
        raise ConfigError("the compare stage's inputs do not match its labels",
                          why=f"missing {', '.join(missing) or 'nothing'}; unexpected {', '.join(extra) or 'nothing'}",
                          fix="give eval0..evalN-1 (and bench0..benchN-1) for N labels")
    evals = [load_report(inputs[f"eval{i}"]) for i in range(n)]
    benches = [load_report(inputs[f"bench{i}"]) if f"bench{i}" in inputs else None for i in range(n)]
    report = build_comparison(cfg.labels, evals, benches, cfg.ref)
    report["title"] = cfg.title
    report["data"] = evals[0].get("data")
    report["machine"] = next((b.get("machine") for b in benches if b), None)
    plots = all_plots(report["rows"], report["primary_metric"])
    (ctx.out / "plots").mkdir()
    for stem, png in plots.items():
        (ctx.out / "plots" / f"{stem}.png").write_bytes(png)
    report["plots"] = sorted(plots)
    (ctx.out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    (ctx.out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    (ctx.out / "report.html").write_text(render_html(report, plots), encoding="utf-8")
    flat = {f"{r['label']}.{k}": v for r in report["rows"] for k, v in r["metrics"].items() if isinstance(v, int | float)}
    return StageOutput(metrics=flat, meta={"labels": cfg.labels, "ref": cfg.ref, "plots": report["plots"]})
