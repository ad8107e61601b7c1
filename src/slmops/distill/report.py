"""Stage ``distill.report``: how much of the teacher the student keeps, and what it saves.

Each model is measured alone in a fresh process (:func:`.measure.measure` through
:func:`slmops.bench.worker.run_fresh`) on the same test split:
parameters, weights on disk, peak resident memory, mean latency per response, throughput and task
accuracy. The report derives

* ``latency_reduction_pct`` = 100 · (1 − student latency / teacher latency)
* ``memory_reduction_pct`` = 100 · (1 − student model memory / teacher model memory), where *model
  memory* is the process's peak RSS minus its RSS before the model was loaded (the Python, torch
  and data baseline is the same for both and would hide the model's share);
  ``process_memory_reduction_pct`` compares whole-process peaks too
* ``accuracy_retention_pct`` = 100 · student accuracy / teacher accuracy
* ``size_reduction_pct``, ``parameter_ratio``

and writes ``report.json`` and ``report.md`` into a ``report`` artifact whose parents are the
teacher, the student and the test data.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from slmops.errors import ConfigError
from slmops.stage import StageOutput
from slmops.store.artifact import Artifact

log = logging.getLogger(__name__)


class ReportConfig(BaseModel):
    """``distill.report``: which split, how many responses, how long each."""

    model_config = ConfigDict(extra="forbid")
    split: str = Field("test", description="Split of the data to measure on")
    limit: int | None = Field(200, ge=1, description="At most this many records (None = all)")
    max_tokens: int = Field(32, ge=1, description="Most new tokens per response (greedy)")
    metric: Literal["auto", "accuracy", "exact_match"] = Field(
        "auto", description="auto: JSON compared parsed, else label-style match against the reference answer"
    )
    warmup: int = Field(1, ge=0, description="Responses generated before timing starts")
    threads: int | None = Field(None, ge=1, description="torch threads per measurement (default: torch's)")


def _pct(new: float | None, old: float | None) -> float | None:
    if new is None or not old:
        return None
    return round(100.0 * (1.0 - new / old), 2)


def measure_in_subprocess(model: Artifact, data: Artifact, cfg: ReportConfig, *, timeout_s: float = 3600) -> dict[str, Any]:
    if model.kind != "model":
        raise ConfigError(
            f"sha256:{model.short} is a {model.kind}, not a model",
            fix="merge an adapter into its base first (`slmops adapters merge`), then report on the merged model",
        )
    from slmops.bench.worker import run_fresh

    kwargs = {"model_dir": str(model.path), "data_dir": str(data.path), "split": cfg.split, "limit": cfg.limit, "max_tokens": cfg.max_tokens,
              "metric": cfg.metric, "warmup": cfg.warmup, "threads": cfg.threads}
    return run_fresh("slmops.distill.measure:measure", kwargs, label=f"measure sha256:{model.short}", timeout_s=timeout_s,
                     env={"TOKENIZERS_PARALLELISM": "false"}, fix="run slmops.distill.measure.measure on it in Python to see the whole error")


def retention(teacher: dict[str, Any], student: dict[str, Any]) -> dict[str, Any]:
    """The derived comparison of two measurements."""
    ta, sa = teacher.get("accuracy"), student.get("accuracy")
    return {
        "parameter_ratio": round(student["parameters"] / teacher["parameters"], 6) if teacher.get("parameters") else None,
        "size_reduction_pct": _pct(student["weights_bytes"], teacher["weights_bytes"]),
        "latency_reduction_pct": _pct(student["mean_latency_s"], teacher["mean_latency_s"]),
        "memory_reduction_pct": _pct(student["model_rss_bytes"], teacher["model_rss_bytes"]),
        "process_memory_reduction_pct": _pct(student["peak_rss_bytes"], teacher["peak_rss_bytes"]),
        "throughput_ratio": round(student["throughput_tok_s"] / teacher["throughput_tok_s"], 3)
        if student.get("throughput_tok_s") and teacher.get("throughput_tok_s")
        else None,
        "accuracy_retention_pct": round(100.0 * sa / ta, 2) if ta and sa is not None else None,
    }


def _markdown(t: dict[str, Any], s: dict[str, Any], r: dict[str, Any], cfg: ReportConfig) -> str:
    rows = [
        ("parameters", "parameters"),
        ("weights on disk (bytes)", "weights_bytes"),
        ("model memory (peak RSS − baseline, bytes)", "model_rss_bytes"),
        ("process peak RSS (bytes)", "peak_rss_bytes"),
        ("mean latency per response (s)", "mean_latency_s"),
        ("throughput (tokens/s)", "throughput_tok_s"),
        ("task accuracy", "accuracy"),
    ]
    lines = [
        f"# Distillation retention report ({cfg.split} split, {t['responses']} responses)",
        "",
        "| | teacher | student |",
        "|---|---|---|",
    ]
    lines += [f"| {label} | {t.get(k)} | {s.get(k)} |" for label, k in rows]
    lines += ["", "| derived | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in r.items()]
    return "\n".join(lines) + "\n"


def report(teacher: Artifact, student: Artifact, data: Artifact, cfg: ReportConfig, out: Path) -> StageOutput:
    from slmops.data.io import dataset_splits

    if cfg.split not in dataset_splits(data):
        raise ConfigError(
            f"--split {cfg.split}: dataset sha256:{data.short} has no such split", fix=f"use one of {', '.join(dataset_splits(data))}"
        )
    t = measure_in_subprocess(teacher, data, cfg)
    s = measure_in_subprocess(student, data, cfg)
    r = retention(t, s)
    doc = {
        "teacher": {"digest": teacher.digest, **t},
        "student": {"digest": student.digest, **s},
        "retention": r,
        "config": cfg.model_dump(),
    }
    (out / "report.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(_markdown(t, s, r, cfg), encoding="utf-8")
    metrics: dict[str, Any] = {**{k: v for k, v in r.items() if v is not None}}
    for who, m in (("teacher", t), ("student", s)):
        for k in ("parameters", "weights_bytes", "model_rss_bytes", "peak_rss_bytes", "mean_latency_s", "throughput_tok_s", "accuracy"):
            metrics[f"{who}_{k}"] = m.get(k)
    return StageOutput(
        metrics=metrics,
        meta={"teacher": teacher.digest, "student": student.digest, "data": data.digest, "responses": t["responses"]},
        kind="report",
        format="json",
    )
