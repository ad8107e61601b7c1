"""Online quality: re-score a sampled share of logged requests with an OpenAI-compatible judge.

The sample is deterministic per request (a hash of its id against ``rate``), so reruns add only
new requests; scores (0–1, the judge's 1–10 divided by 10) go to a ``judge_scores`` table next to
the request log, which ``data from-logs --min-judge-score`` reads. The running mean over every
scored request of the model is committed as a ``report`` artifact (parent role ``model``).
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


def sample_and_score(model: Artifact, *, store: Any, judge_url: str, rate: float = 0.05, judge_model: str = "judge",
                     log_path: Path | None = None, since_s: float | None = None, api_key: str | None = None,
                     limit: int = 500) -> dict[str, Any]:
    """Score the sampled, not yet scored requests of ``model``; commit and return the running report."""
    from slmops.serve.requestlog import default_path

    if not 0 < rate <= 1:
        raise ConfigError(f"--rate {rate} is not a share", fix="use a number in (0, 1], e.g. 0.05")
    path = Path(log_path or default_path(store.home))
    if not path.is_file():
        raise DataError(f"no request log at {path}", fix="serve the model with --log-content first (or pass --log-db)")
    conn = sqlite3.connect(path, timeout=30)
    try:
        conn.execute(_SCHEMA)
        done = {r[0] for r in conn.execute("SELECT request_id FROM judge_scores")}
        where = "status = 200 AND digest = ? AND prompt IS NOT NULL AND completion IS NOT NULL AND request_id IS NOT NULL"
        args: list[Any] = [model.digest]
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
            conn.execute("INSERT OR REPLACE INTO judge_scores VALUES (?,?,?,?,?,?)", (rid, model.digest, score, judge_url, time.time(), raw))
            conn.commit()
            new += 1
        scores = [r[0] for r in conn.execute("SELECT score FROM judge_scores WHERE model_digest = ?", (model.digest,))]
    finally:
        conn.close()
    report = {"model": model.digest, "rate": rate, "judge": judge_url, "logged": len(rows), "newly_scored": new,
              "scored": len(scores), "quality": sum(scores) / len(scores) if scores else None}
    with store.staging() as tmp:
        write_json_atomic(tmp / "quality.json", report)
        art = store.commit(tmp, kind="report", format="json", parents=[Parent(digest=model.digest, role="model")],
                           metrics={"quality": report["quality"], "scored": len(scores)}, meta={"source": "monitor.sample"})
    return {**report, "report": art.digest, "raw_scores": json.dumps(scores[-5:])}
