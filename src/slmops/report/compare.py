"""Comparing models side by side: one row per model (size, memory, speed, quality) and retention vs a reference.

:func:`build_comparison` turns eval and bench reports into the comparison (pure; tested on
hand-made reports). :func:`compare` is the library entry point behind ``slmops compare``: it
runs (or reuses from the cache) the ``eval`` and ``bench`` stages for every model, then the
``compare`` stage, whose artifact holds ``report.json``, ``report.md``, ``report.html`` and the
plots, with every eval and bench report as a parent. Retention follows the way distillation case
studies report it: latency reduction %, memory reduction %, and each quality metric as a
percentage of the reference's (inverted for perplexity, where lower is better).

An evaluation already in the store for the same model, data and answer-changing settings is reused
as it is (:func:`cached_eval`; batch size, sample logging and timeouts do not change an answer), so
``compare`` after ``eval`` re-runs nothing. Each benchmark report says whether it was measured under
contention or with a wide run-to-run spread (:mod:`slmops.bench.contention`), and the comparison
carries ``warnings`` — unreliable rows, and latency differences smaller than the runs' own spread —
which every rendering shows (``--force`` measures again).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from slmops.errors import ConfigError, SlmopsError
from slmops.evaluate.run import retention_pct

if TYPE_CHECKING:
    from slmops.stage.runner import RunResult
    from slmops.store.artifact import Artifact
    from slmops.store.registry import Store

log = logging.getLogger(__name__)

SCHEMA = "slmops.compare/1"
MAX_MODELS = 16


def _reduction(value: float | None, ref: float | None) -> float | None:
    if value is None or not ref:
        return None
    return 100.0 * (1.0 - value / ref)


def row_for(label: str, ev: dict[str, Any], bench: dict[str, Any] | None) -> dict[str, Any]:
    """One model's row from its eval report and (optionally) its bench report."""
    t = ev.get("target") or {}
    row: dict[str, Any] = {
        "label": label, "digest": t.get("digest"), "parameters": t.get("parameters"), "size_bytes": t.get("size_bytes"),
        "precision": t.get("precision"), "format": t.get("format"), "metrics": dict(ev.get("metrics") or {}),
        "examples": (ev.get("counts") or {}).get("examples"),
    }
    if bench:
        s = bench["summary"]
        samples = [x for c in bench.get("cells", []) for x in c.get("samples", [])]
        row.update(
            peak_rss_bytes=bench["memory"]["peak_rss_bytes"], load_s=bench.get("load_s"),
            size_bytes=row["size_bytes"] or bench.get("size_bytes"),
            ttft_s=s["ttft_s"]["p50"], tpot_s=s["tpot_s"]["p50"], e2e_s=s["e2e_s"]["p50"], tokens_per_s=s["output_tokens_per_s"],
            ttft_samples=[x["ttft"] for x in samples if x.get("ttft") is not None],
            e2e_samples=[x["latency"] for x in samples if x.get("latency") is not None],
            reliability=bench.get("reliability"),
        )
    return row


def build_comparison(labels: Sequence[str], evals: Sequence[dict[str, Any]], benches: Sequence[dict[str, Any] | None],
                     ref: str | None = None) -> dict[str, Any]:
    """The comparison report: rows, the metric names, and each row's retention vs the ``ref`` row."""
    if not (len(labels) == len(evals) == len(benches)):
        raise ValueError("labels, evals and benches differ in length")
    rows = [row_for(lab, e, b) for lab, e, b in zip(labels, evals, benches, strict=True)]
    asked = [str(m) for m in ((evals[0].get("config") or {}).get("metrics") or [])] if evals else []
    rank = {m: i for i, m in enumerate(asked)}  # the order given to --metrics (judge_* under judge)
    found = list(dict.fromkeys(m for r in rows for m in r["metrics"]))
    metrics = sorted(found, key=lambda m: (rank.get("judge" if m.startswith("judge_") else m, len(rank)), found.index(m)))
    if ref is not None and ref not in labels:
        raise ConfigError(f"--ref {ref} is not one of the compared models", fix=f"use one of: {', '.join(labels)}")
    if ref is not None:
        base = rows[list(labels).index(ref)]
        for r in rows:
            r["vs_ref"] = {
                "latency_reduction_pct": _reduction(r.get("e2e_s"), base.get("e2e_s")),
                "ttft_reduction_pct": _reduction(r.get("ttft_s"), base.get("ttft_s")),
                "memory_reduction_pct": _reduction(r.get("peak_rss_bytes"), base.get("peak_rss_bytes")),
                "size_reduction_pct": _reduction(r.get("size_bytes"), base.get("size_bytes")),
                "speedup": (r["tokens_per_s"] / base["tokens_per_s"]) if r.get("tokens_per_s") and base.get("tokens_per_s") else None,
                "retention_pct": retention_pct(r["metrics"], base["metrics"]),
            }
    return {"schema": SCHEMA, "ref": ref, "metrics": metrics, "primary_metric": metrics[0] if metrics else None, "rows": rows,
            "warnings": speed_warnings(rows, ref)}


def speed_warnings(rows: Sequence[dict[str, Any]], ref: str | None) -> list[str]:
    """Why some speed numbers should not be trusted: measured under load, or differences within the runs' spread."""
    out = [f"{r['label']}: speed unreliable — {'; '.join(r['reliability']['why'])}" for r in rows
           if r.get("reliability") and not r["reliability"].get("reliable", True)]
    base = next((r for r in rows if r["label"] == ref), None)
    if base is None or not base.get("e2e_s"):
        return out
    for r in rows:
        if r is base or not r.get("e2e_s"):
            continue
        noise = max((x.get("reliability") or {}).get("spread_pct") or 0.0 for x in (r, base))
        change = abs(_reduction(r["e2e_s"], base["e2e_s"]) or 0.0)
        if noise and change <= noise:
            out.append(f"{r['label']}: its {change:.0f}% latency difference from {ref} is within the runs' own spread ({noise:.0f}%)")
    return out


#: EvalConfig fields that change no answer and no score: an evaluation differing only in them is reused.
_NOT_ANSWERS = frozenset({"batch_size", "log_samples", "request_timeout_s", "api_key_env", "judge_api_key_env"})


def cached_eval(store: Store, model: Artifact, data: Artifact, eval_config: dict[str, Any]) -> Artifact | None:
    """The newest stored ``eval`` report of ``model`` on ``data`` made with the same answer-changing settings, if any."""
    from slmops.evaluate.config import EvalConfig

    want = {k: v for k, v in EvalConfig.model_validate(eval_config).model_dump(mode="json").items() if k not in _NOT_ANSWERS}
    found = []
    for digest, role in store.children(model.digest):
        if role != "model":
            continue
        try:
            art = store.get(digest)
        except SlmopsError:
            continue
        st = art.manifest.stage
        parents = {p.role: p.digest for p in art.manifest.parents}
        if st is None or st.name != "eval" or parents.get("data") != data.digest:
            continue
        have = {k: v for k, v in st.config.items() if k not in _NOT_ANSWERS}
        if have == want:
            found.append(art)
    return max(found, key=lambda a: a.manifest.created_at) if found else None


def compare(targets: Sequence[str], data: str, *, store: Store, ref: str | None = None, eval_config: dict[str, Any] | None = None,
            bench_config: dict[str, Any] | None = None, force: bool = False, name: str | None = None,
            title: str = "Model comparison") -> RunResult:
    """Evaluate and benchmark every target on ``data`` (cached unless ``force``) and store the comparison report."""
    from slmops import formats
    from slmops.pipeline.inputs import resolve_input
    from slmops.stage.runner import run_stage

    labels = list(dict.fromkeys(targets))
    if ref is not None and ref not in labels:
        labels.insert(0, ref)
    if len(labels) < 2:
        raise ConfigError("compare needs at least two models", fix="slmops compare A B [C ...] --data DATASET")
    if len(labels) > MAX_MODELS:
        raise ConfigError(f"compare takes at most {MAX_MODELS} models", fix="split the comparison")
    data_art = resolve_input(data, store, kind="dataset")
    inputs = {}
    for i, label in enumerate(labels):
        model = resolve_input(label, store, kind=formats.runnable_kinds())
        found = None if force else cached_eval(store, model, data_art, eval_config or {})
        if found is not None:
            log.info("compare: reusing the evaluation sha256:%s of %s", found.short, label)
        inputs[f"eval{i}"] = found or run_stage("eval", {"model": model, "data": data_art}, eval_config or {}, store=store, force=force).artifact
        inputs[f"bench{i}"] = run_stage("bench", {"model": model}, bench_config or {}, store=store, force=force).artifact
    cfg = {"labels": labels, "ref": ref or labels[0], "title": title}
    return run_stage("compare", inputs, cfg, store=store, output_name=name)
