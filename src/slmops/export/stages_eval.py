"""Registers the measuring stages: ``parity`` (an export against its parent) and ``optimize`` (pick the best export).

Both write a ``report`` artifact (``report.json`` for machines, ``report.md`` for people) whose
parents are its inputs, so the lineage of a served model leads to the checks it passed.
``optimize`` runs the export and parity stages itself, through the cached runner, in the store
its inputs live in; each candidate and each parity report is an artifact of its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slmops.errors import ConfigError, DataError
from slmops.export.optimize import OptimizeConfig
from slmops.export.parity import ParityConfig
from slmops.stage import StageContext, StageOutput, stage
from slmops.store.artifact import Artifact

REPORT_JSON, REPORT_MD = "report.json", "report.md"
_SPLIT_PREFERENCE = ("test", "validation", "train")


def _records(data: Artifact, split: str | None) -> list[Any]:
    from slmops.data.io import dataset_splits, read_dataset

    if data.kind != "dataset":
        raise DataError(f"artifact {data.short} is a {data.kind}, not a dataset", fix="pass --data a dataset (a .jsonl file or a dataset artifact)")
    if split is None and not (data.path / "data.jsonl").is_file():
        have = dataset_splits(data)
        split = next((s for s in _SPLIT_PREFERENCE if s in have), have[0] if have else None)
    return read_dataset(data, split=split)


def _write(out: Path, report: dict[str, Any], markdown: str) -> None:
    (out / REPORT_JSON).write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    (out / REPORT_MD).write_text(markdown, encoding="utf-8")


def parity_reference(candidate: Artifact, store: Any) -> Artifact:
    """The exact fp32 model ``candidate`` was exported from: its ``model`` parent, or — when the export
    carries or merged an ``adapter`` — that adapter, which :func:`slmops.runtimes.open_runtime` opens on its base.

    A package made from another export (``export.ollama``, ``export.foundry``) leads back through it.
    """
    art = candidate
    for _ in range(8):
        roles = {p.role: p.digest for p in art.manifest.parents}
        if "adapter" in roles:
            adapter = store.get(roles["adapter"])
            trained_on = [p.digest for p in adapter.manifest.parents if p.role == "model"]
            if trained_on and trained_on[0] == roles.get("model"):
                return adapter
            raise ConfigError(f"sha256:{candidate.short} was exported with an adapter trained on another base",
                              fix="name the reference with --ref (the merged model: slmops adapters merge BASE ADAPTER)")
        parent = roles.get("model") or roles.get("onnx")
        if parent is None:
            break
        art = store.get(parent)
        if art.kind == "model":
            return art
    raise ConfigError(f"sha256:{candidate.short} has no parent model to compare with", fix="name the reference with --ref")


def active_adapter(art: Artifact) -> str | None:
    """The run-time adapter an ONNX export runs with (``--adapter-mode runtime`` with one adapter), as the export was meant to run."""
    adapter = art.manifest.meta.get("adapter") or {}
    names = list(art.manifest.meta.get("adapters") or {})
    return names[0] if art.kind == "onnx" and adapter.get("mode") == "runtime" and len(names) == 1 else None


def store_of(art: Artifact) -> Any:
    """The store an artifact lives in (``<home>/artifacts/<digest>``)."""
    from slmops.store.registry import Store

    return Store(art.path.parent.parent)


@stage("parity", config=ParityConfig, kind="report", format="json", inputs=("candidate", "reference", "data"), version=2)  # 2: one gate shape, task_drop
def parity(inputs: dict[str, Artifact], cfg: ParityConfig, ctx: StageContext) -> StageOutput:
    """Compare a candidate (an export) with its reference on a dataset: KL, top-1, perplexity, greedy and task score."""
    from slmops.export.parity import check_parity, measure_parity, report_markdown
    from slmops.runtimes import open_runtime

    cand_art, ref_art, data = inputs["candidate"], inputs["reference"], inputs["data"]
    records = _records(data, cfg.split)
    ref = open_runtime(ref_art, **cfg.reference_options)
    try:
        cand = open_runtime(cand_art, **cfg.candidate_options)
        try:
            metrics = measure_parity(cand, ref, records, cfg, adapter=active_adapter(cand_art))
            runtimes = {"candidate": cand.name, "reference": ref.name}
        finally:
            cand.close()
    finally:
        ref.close()
    gates = [g.to_dict() for g in check_parity(metrics, cfg)]
    metrics["passed"] = all(g["passed"] for g in gates)
    report = {"metrics": metrics, "gates": gates, "candidate": cand_art.digest, "reference": ref_art.digest, "data": data.digest, "runtimes": runtimes}
    _write(ctx.out, report, report_markdown(metrics, gates, candidate=f"{cand_art.kind} {cand_art.short}", reference=f"{ref_art.kind} {ref_art.short}"))
    return StageOutput(metrics=metrics, meta={"gates": gates, "runtimes": runtimes})


@stage("optimize", config=OptimizeConfig, kind="report", format="json", inputs=("model", "data"))
def optimize(inputs: dict[str, Artifact], cfg: OptimizeConfig, ctx: StageContext) -> StageOutput:
    """Build every target export, check parity and measure speed/size/RSS; choose the smallest (or fastest) that passes."""
    from slmops.export.optimize import optimize as run_optimize
    from slmops.export.optimize import report_markdown

    model = inputs["model"]
    _records(inputs["data"], None)  # fail early on a bad dataset
    with store_of(model) as store:
        result = run_optimize(model, inputs["data"], cfg, store)
    _write(ctx.out, result, report_markdown(result))
    metrics = {"chosen": result["chosen"], "chosen_digest": result["chosen_digest"], "candidates": len(result["rows"]),
               "passing": sum(r["passed"] for r in result["rows"])}
    return StageOutput(metrics=metrics, meta={"rows": result["rows"]})
