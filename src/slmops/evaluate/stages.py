"""Registers the ``eval`` and ``validate`` stages (report artifacts linked to the model, or to the data for a URL).

``eval`` takes ``data`` and either a ``model`` input or ``url`` in its config, plus an optional
``ref`` (another eval report, whose metrics become the reference for retention and relative gates).
Its in-progress answers live in the run's work dir (``ctx.workdir``, keyed by the cache key, which
``gc`` leaves alone), so a crashed run resumes; run options (batch size, timeouts, executor) are outside
that key, so a rerun with other options resumes too.
"""

from __future__ import annotations

import json
import shutil

from slmops.errors import ConfigError
from slmops.evaluate.config import EVAL_BATCH_SIZE, EVAL_TIMEOUT_S, EvalConfig
from slmops.evaluate.validate import ValidateConfig
from slmops.stage import StageContext, StageOutput, stage
from slmops.stage.context import resume_or_start_over
from slmops.store.artifact import Artifact
from slmops.store.locks import run_lock


def select_records(data: Artifact, split: str, limit: int | None) -> tuple[str, list]:
    """The records of ``split`` (``auto``: test, else the unsplit data, else validation), at most ``limit``."""
    from slmops.data.io import dataset_splits, read_dataset

    have = dataset_splits(data)
    if split == "auto":
        split = next((s for s in ("test", "data", "validation") if s in have), have[0] if have else "data")
    records = read_dataset(data, None if split == "data" else split)
    return split, records[:limit] if limit else records


def _check_target(inputs: dict[str, Artifact], url: str | None) -> Artifact | None:
    model = inputs.get("model")
    if model is None and url is None:
        raise ConfigError("nothing to evaluate", fix="pass a model input (TARGET) or set url (--url)")
    if model is not None and url is not None:
        raise ConfigError("give a model or --url, not both")
    return model


@stage("eval", config=EvalConfig, kind="report", format="eval-report", inputs=("data",), optional_inputs=("model", "ref"))
def eval_stage(inputs: dict[str, Artifact], cfg: EvalConfig, ctx: StageContext) -> StageOutput:
    """Evaluate a model (or an OpenAI-compatible URL) on a dataset: quality metrics, per-example samples."""
    from slmops.evaluate.report import build_report, load_report, write_eval_report
    from slmops.evaluate.run import evaluate
    from slmops.evaluate.targets import open_target

    model = _check_target(inputs, cfg.url)
    data, ref_art = inputs["data"], inputs.get("ref")
    ref = None
    if ref_art is not None:
        ref_report = load_report(ref_art)
        ref = {"digest": ref_art.digest, "target": ref_report.get("target"), "metrics": ref_report.get("metrics", {})}
    split, records = select_records(data, cfg.split, cfg.limit)
    opts, workdir = ctx.options, ctx.workdir
    target = open_target(model, url=cfg.url, model_name=cfg.model_name, api_key_env=cfg.api_key_env, runtime=cfg.runtime,
                         timeout=opts.timeout(EVAL_TIMEOUT_S), concurrency=opts.batch(EVAL_BATCH_SIZE))
    # resumable progress in the run's work dir: kept after a crash (and by gc) for the rerun
    with run_lock(workdir, activity="evaluating this exact run", fix="wait for it to finish (or stop it); a rerun then resumes"):
        resume_or_start_over(workdir / "progress", opts, what="answers")
        try:
            result = evaluate(target, records, cfg, options=opts, workdir=workdir / "progress", store=ctx.store, model=model)
        finally:
            target.close()
    report = build_report(result, cfg, data=data.digest, split=split, ref=ref)
    write_eval_report(ctx.out, report, result.samples if cfg.log_samples else None)
    if not opts.keep_run_dir:
        shutil.rmtree(workdir, ignore_errors=True)
    metrics = {k: v for k, v in result.metrics.items() if v is not None}
    metrics.update(examples=result.counts["examples"], errors=result.counts["errors"])
    return StageOutput(metrics=metrics, meta={"target": result.target, "split": split, "ref": ref["digest"] if ref else None})


@stage("validate", config=ValidateConfig, kind="report", format="validate-report", inputs=("data",), optional_inputs=("model",))
def validate_stage(inputs: dict[str, Artifact], cfg: ValidateConfig, ctx: StageContext) -> StageOutput:
    """Run the deployment checklist (domain queries, format, memory growth, latency, edge cases) on a model or URL."""
    from slmops.evaluate.targets import open_target
    from slmops.evaluate.validate import validate

    model = _check_target(inputs, cfg.url)
    split, records = select_records(inputs["data"], cfg.split, cfg.limit)
    target = open_target(model, url=cfg.url, model_name=cfg.model_name, api_key_env=cfg.api_key_env, runtime=cfg.runtime,
                         timeout=cfg.request_timeout_s, concurrency=1)
    try:
        report = validate(target, records, cfg)
    finally:
        target.close()
    report["data"] = {"digest": inputs["data"].digest, "split": split}
    (ctx.out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    lines = [f"# Deployment validation: {'PASSED' if report['passed'] else 'FAILED'}", ""]
    lines += [f"- **{c['status'].upper()}** `{c['name']}` — {c['detail']}" for c in report["checks"]]
    (ctx.out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8", errors="backslashreplace")
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    return StageOutput(metrics={"passed": report["passed"], **{f"check.{k}": v for k, v in statuses.items()}},
                       meta={"target": report["target"], "split": split})
