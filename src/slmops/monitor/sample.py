"""Online quality: re-score a sampled share of logged requests with an OpenAI-compatible judge.

The sample is deterministic per request (a hash of its id against ``rate``), so reruns add only
new requests; scores (0–1, the judge's 1–10 divided by 10) go to a ``judge_scores`` table next to
the request log, which ``data from-logs --min-judge-score`` reads. The running mean over every
scored request of the model is committed as a ``report`` artifact (parent role ``model``).

The running score is also live: a server reads ``judge_scores`` at every ``/metrics`` scrape and
exposes ``slmops_quality_score{model,version}`` (so a cron'd ``monitor sample`` feeds the gauge),
and ``serve --judge URL`` runs the same sampling itself every ``--judge-every`` (:func:`judge_loop`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from slmops.errors import ConfigError, DataError
from slmops.store.artifact import Artifact, Parent, write_json_atomic

log = logging.getLogger(__name__)

RUBRIC = ("You grade an assistant's answer. Reply with one line 'Score: N' where N is 1 (useless or wrong) "
          "to 10 (fully correct and helpful).\n\nConversation:\n{prompt}\n\nAnswer:\n{completion}")
_SCORE = re.compile(r"score\s*[:=]?\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_SCHEMA = ("CREATE TABLE IF NOT EXISTS judge_scores (request_id TEXT PRIMARY KEY, model_digest TEXT, score REAL, "
           "judge TEXT, ts REAL, raw TEXT)")


def sampled(request_id: str, rate: float) -> bool:
    """Whether ``request_id`` falls in the ``rate`` share (stable across runs)."""
    h = int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:8], "big")
    return h / 2**64 < rate


def parse_score(text: str) -> float | None:
    m = _SCORE.search(text) or re.search(r"\b(\d+(?:\.\d+)?)\b", text)
    if not m:
        return None
    return max(0.0, min(10.0, float(m[1]))) / 10.0


def judge_once(url: str, model: str, prompt: str, completion: str, *, api_key: str | None = None, timeout: float = 60.0) -> tuple[float | None, str]:
    import httpx

    body = {"model": model, "temperature": 0, "max_tokens": 16,
            "messages": [{"role": "user", "content": RUBRIC.format(prompt=prompt, completion=completion)}]}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    r = httpx.post(url.rstrip("/") + "/chat/completions", json=body, headers=headers, timeout=timeout)
    if r.status_code != 200:
        raise DataError(f"the judge at {url} answered {r.status_code}", why=r.text[:200], fix="check --judge, --judge-model and the key")
    text = r.json()["choices"][0]["message"]["content"] or ""
    return parse_score(text), text


def _open_log(log_path: Path) -> sqlite3.Connection:
    if not log_path.is_file():
        raise DataError(f"no request log at {log_path}", fix="serve the model with --log-content first (or pass --log-db)")
    conn = sqlite3.connect(log_path, timeout=30)
    conn.execute(_SCHEMA)
    return conn


def score_sample(model_digest: str, *, log_path: Path, judge_url: str, rate: float = 0.05, judge_model: str = "judge",
                 since_s: float | None = None, api_key: str | None = None, limit: int = 500) -> dict[str, Any]:
    """Judge the sampled, not yet scored logged requests of ``model_digest``; return the running totals.

    Used by ``monitor sample`` (which also commits a report) and by the server's periodic judge
    (``serve --judge URL``), which only updates the ``slmops_quality_score`` gauge.
    """
    if not 0 < rate <= 1:
        raise ConfigError(f"--rate {rate} is not a share", fix="use a number in (0, 1], e.g. 0.05")
    conn = _open_log(Path(log_path))
    try:
        done = {r[0] for r in conn.execute("SELECT request_id FROM judge_scores")}
        where = "status = 200 AND digest = ? AND prompt IS NOT NULL AND completion IS NOT NULL AND request_id IS NOT NULL"
        args: list[Any] = [model_digest]
        if since_s:
            where += " AND ts >= ?"
            args.append(time.time() - since_s)
        rows = conn.execute(f"SELECT request_id, prompt, completion FROM requests WHERE {where} ORDER BY ts", args).fetchall()
        todo = [r for r in rows if r[0] not in done and sampled(r[0], rate)][:limit]
        new = 0
        for rid, prompt, completion in todo:
            score, raw = judge_once(judge_url, judge_model, prompt, completion, api_key=api_key)
            if score is None:
                log.warning("judge reply for %s has no score: %r", rid, raw[:80])
                continue
            conn.execute("INSERT OR REPLACE INTO judge_scores VALUES (?,?,?,?,?,?)", (rid, model_digest, score, judge_url, time.time(), raw))
            conn.commit()
            new += 1
        scores = [r[0] for r in conn.execute("SELECT score FROM judge_scores WHERE model_digest = ? ORDER BY ts", (model_digest,))]
    finally:
        conn.close()
    return {"model": model_digest, "rate": rate, "judge": judge_url, "logged": len(rows), "newly_scored": new,
            "scored": len(scores), "quality": sum(scores) / len(scores) if scores else None, "latest_scores": scores[-5:]}


def quality_by_digest(log_path: Path) -> dict[str, tuple[float, int]]:
    """``digest -> (mean judge score, scored requests)`` from the request log; empty when nothing was judged yet."""
    path = Path(log_path)
    if not path.is_file():
        return {}
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return {}
    try:
        rows = conn.execute("SELECT model_digest, AVG(score), COUNT(*) FROM judge_scores GROUP BY model_digest").fetchall()
    except sqlite3.OperationalError:  # no judge_scores table: nothing was judged yet
        return {}
    finally:
        conn.close()
    return {d: (float(mean), int(n)) for d, mean, n in rows}


def sample_and_score(model: Artifact, *, store: Any, judge_url: str, rate: float = 0.05, judge_model: str = "judge",
                     log_path: Path | None = None, since_s: float | None = None, api_key: str | None = None,
                     limit: int = 500) -> dict[str, Any]:
    """Score the sampled, not yet scored requests of ``model``; commit and return the running report."""
    from slmops.serve.requestlog import default_path

    report = score_sample(model.digest, log_path=Path(log_path or default_path(store.home)), judge_url=judge_url, rate=rate,
                          judge_model=judge_model, since_s=since_s, api_key=api_key, limit=limit)
    latest = report.pop("latest_scores")
    with store.staging() as tmp:
        write_json_atomic(tmp / "quality.json", report)
        art = store.commit(tmp, kind="report", format="json", parents=[Parent(digest=model.digest, role="model")],
                           metrics={"quality": report["quality"], "scored": report["scored"]}, meta={"source": "monitor.sample"})
    return {**report, "report": art.digest, "raw_scores": json.dumps(latest)}


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
