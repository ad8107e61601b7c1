"""Online quality: re-score a sampled share of logged requests with the judge, as the stage ``monitor.sample``.

The sample is deterministic per request (a hash of its id against ``rate``), so reruns add only
new requests. The judge is :mod:`slmops.evaluate.judge` (its rubric, prompt and verdict parser)
behind an OpenAI-compatible endpoint reached through :mod:`slmops.client`; a request's quality is
the mean of its 1–5 criterion scores divided by 5 (0–1). Scores go to the request log's
``judge_scores`` table (:mod:`slmops.monitor.requestlog`), which ``data from-logs
--min-judge-score`` reads. The stage commits the running mean over every scored request of the
model as a ``report`` artifact (``quality.json``, parent role ``model``); its fingerprint covers the
sampled rows and the scores already taken, so new traffic makes a new report and an unchanged log
is a cache hit.

The running score is also live: a server reads ``judge_scores`` at every ``/metrics`` scrape and
exposes ``slmops_quality_score{model,version}`` (so a cron'd ``monitor sample`` feeds the gauge),
and ``serve --judge URL`` runs the same sampling itself every ``--judge-every`` (:func:`judge_loop`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from slmops.errors import ConfigError
from slmops.monitor import requestlog
from slmops.settings import api_key_from_env
from slmops.stage import StageContext, StageOutput, stage
from slmops.store.artifact import Artifact, write_json_atomic

log = logging.getLogger(__name__)


class SampleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    log_path: str = Field(description="The request log (SQLite, written by slmops serve --log-content)")
    model_digest: str = Field(description="Digest of the served model whose logged requests are scored")
    judge_url: str = Field(description="OpenAI-compatible base URL of the judge (…/v1)")
    judge_model: str = Field("judge", description="Model id the judge endpoint serves")
    rate: float = Field(0.05, gt=0, le=1, description="Share of logged requests to score (stable per request)")
    since_s: float | None = Field(None, gt=0, description="Only requests newer than this many seconds")
    limit: int = Field(500, ge=1, description="Most requests judged in one run")
    api_key_env: str | None = Field(None, description="Environment variable holding the judge's key (the key is never stored)")


def sampled(request_id: str, rate: float) -> bool:
    """Whether ``request_id`` falls in the ``rate`` share (stable across runs)."""
    h = int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:8], "big")
    return h / 2**64 < rate


def _conversation(raw: str | None) -> list[dict[str, str]]:
    value = requestlog.decode_prompt(raw)
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        return [{"role": str(m.get("role")), "content": str(m.get("content") or "")} for m in value]
    if isinstance(value, list) and value:
        value = value[0]
    return [{"role": "user", "content": str(value)}]


def _since(since_s: float | None) -> float | None:
    return time.time() - since_s if since_s else None


def score_sample(model_digest: str, *, log_path: Path, judge_url: str, rate: float = 0.05, judge_model: str = "judge",
                 since_s: float | None = None, api_key: str | None = None, limit: int = 500) -> dict[str, Any]:
    """Judge the sampled, not yet scored logged requests of ``model_digest``; return the running totals.

    Used by the ``monitor.sample`` stage and by the server's periodic judge (``serve --judge URL``),
    which only updates the ``slmops_quality_score`` gauge.
    """
    from slmops.client import ClientError, OpenAIClient, chat_body, normalize_base_url
    from slmops.evaluate.judge import DEFAULT_RUBRIC, judge_messages, parse_verdict

    if not 0 < rate <= 1:
        raise ConfigError(f"--rate {rate} is not a share", fix="use a number in (0, 1], e.g. 0.05")
    conn = requestlog.open_existing(Path(log_path))
    try:
        done = requestlog.scored_request_ids(conn)
        rows = requestlog.requests_of(Path(log_path), model_digest, since=_since(since_s), with_completion=True)
        todo = [r for r in rows if r["request_id"] not in done and sampled(r["request_id"], rate)][:limit]
        new = 0
        with OpenAIClient(normalize_base_url(judge_url, flag="--judge"), api_key=api_key, timeout_s=60.0, purpose="the judge") as judge:
            for r in todo:
                msgs = judge_messages(_conversation(r["prompt"]), r["completion"], DEFAULT_RUBRIC)
                try:
                    body = judge.chat(chat_body(judge_model, msgs, max_tokens=128, temperature=0.0)).body
                except ClientError as exc:
                    raise ClientError(f"the judge at {judge_url} failed", status=exc.status, why=exc.message,
                                      fix="check --judge, --judge-model and the key") from exc
                raw = body["choices"][0]["message"].get("content") or ""
                verdict = parse_verdict(raw, list(DEFAULT_RUBRIC))
                if verdict is None:
                    log.warning("judge reply for %s has no verdict: %r", r["request_id"], raw[:80])
                    continue
                quality = sum(verdict.values()) / len(verdict) / 5.0
                requestlog.record_judge_score(conn, r["request_id"], model_digest, quality, judge_url, raw)
                new += 1
        scores = requestlog.judge_scores(conn, model_digest)
    finally:
        conn.close()
    return {"model": model_digest, "rate": rate, "judge": judge_url, "logged": len(rows), "newly_scored": new,
            "scored": len(scores), "quality": sum(scores) / len(scores) if scores else None, "latest_scores": scores[-5:]}


def _fingerprint(cfg: SampleConfig) -> str:
    """The sampled rows and the scores already taken: new traffic or new scores make a new report."""
    rows = requestlog.requests_of(Path(cfg.log_path), cfg.model_digest, since=_since(cfg.since_s), with_completion=True)
    conn = requestlog.open_existing(Path(cfg.log_path))
    try:
        done = requestlog.scored_request_ids(conn)
    finally:
        conn.close()
    h = hashlib.sha256()
    for r in rows:
        if sampled(r["request_id"], cfg.rate):
            h.update(f"{r['id']}:{r['request_id'] in done}\n".encode())
    return h.hexdigest()


@stage("monitor.sample", config=SampleConfig, kind="report", format="json", inputs=("model",), fingerprint=_fingerprint)
def sample_stage(inputs: dict[str, Artifact], cfg: SampleConfig, ctx: StageContext) -> StageOutput:
    """Judge a sampled share of a model's logged requests; report the running quality (0-1)."""
    if inputs["model"].digest != cfg.model_digest:
        raise ConfigError("monitor.sample: model_digest differs from the model input", fix="leave model_digest to run_sample")
    report = score_sample(cfg.model_digest, log_path=Path(cfg.log_path), judge_url=cfg.judge_url, rate=cfg.rate,
                          judge_model=cfg.judge_model, since_s=cfg.since_s, api_key=api_key_from_env(cfg.api_key_env), limit=cfg.limit)
    write_json_atomic(ctx.out / "quality.json", report)
    return StageOutput(metrics={k: report[k] for k in ("quality", "scored", "newly_scored", "logged")},
                       meta={"source": "monitor.sample", "judge": cfg.judge_url, "judge_model": cfg.judge_model})


def run_sample(model: Artifact, *, store: Any, judge_url: str, rate: float = 0.05, judge_model: str = "judge",
               log_path: Path | None = None, since_s: float | None = None, api_key_env: str | None = None, limit: int = 500,
               name: str | None = None) -> Any:
    """Library entry point: the ``monitor.sample`` stage for ``model``'s logged traffic; returns the RunResult."""
    from slmops.stage.runner import run_stage

    api_key_from_env(api_key_env)  # a missing key fails before the log is touched
    cfg = SampleConfig(log_path=str(log_path or requestlog.default_path(store.home)), model_digest=model.digest, judge_url=judge_url,
                       judge_model=judge_model, rate=rate, since_s=since_s, limit=limit, api_key_env=api_key_env)
    return run_stage("monitor.sample", {"model": model}, cfg, store=store, output_name=name)


async def judge_loop(*, store: Any, catalog: Any, config: Any, metrics: Any, log_path: Path, state: dict[str, Any]) -> None:
    """The server's periodic judge (``serve --judge URL --judge-rate R --judge-every 5m``).

    Every ``config.judge_every_s`` it scores the sampled new requests of each served model (and of
    each version behind a canary) with the judge and sets ``slmops_quality_score{model,version}``;
    the latest totals per id are kept in ``state``. A failing judge is logged and retried next round.
    """
    from slmops.monitor.periodic import every_served_model

    key = config.judge_api_key.get_secret_value() if config.judge_api_key is not None else None

    def check(model_id: str) -> tuple[str, dict[str, Any]]:
        target = catalog.resolve(model_id)
        return target.version, score_sample(target.digest, log_path=log_path, judge_url=config.judge_url, rate=config.judge_rate,
                                            judge_model=config.judge_model, api_key=key)

    def publish(model_id: str, result: tuple[str, dict[str, Any]]) -> None:
        version, rep = result
        if rep["quality"] is not None:
            metrics.quality.labels(model_id, version).set(rep["quality"])
            metrics.judged.labels(model_id, version).set(rep["scored"])
        state[model_id] = rep
        log.info("judge for %s: quality %s over %d scored requests", model_id, rep["quality"], rep["scored"])

    await every_served_model(lambda: served_ids(config), config.judge_every_s, check, publish, what="judge")


def served_ids(config: Any) -> list[str]:
    """The ids whose quality is tracked: the served models and every version behind a canary group."""
    return list(dict.fromkeys([*config.models, *(ref for refs in config.canary.values() for ref in refs)]))
