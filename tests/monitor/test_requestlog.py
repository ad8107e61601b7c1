"""The request log's schema: numbered migrations, a log written before migrations existed adopted in place."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from slmops.monitor import requestlog

# The schema the server and `monitor sample` created before the log had migrations (CREATE TABLE IF NOT EXISTS).
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  ts REAL, request_id TEXT, route TEXT, model TEXT, version TEXT, digest TEXT, status INTEGER, error TEXT, stream INTEGER,
  prompt_tokens INTEGER, completion_tokens INTEGER, queue_s REAL, ttft_s REAL, latency_s REAL, client TEXT, user TEXT,
  prompt TEXT, completion TEXT
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests(ts);
CREATE INDEX IF NOT EXISTS requests_model ON requests(model, ts);
"""
OLD_JUDGE = ("CREATE TABLE IF NOT EXISTS judge_scores (request_id TEXT PRIMARY KEY, model_digest TEXT, score REAL, "
             "judge TEXT, ts REAL, raw TEXT)")


def _old_log(path: Path, *, judged: bool) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA)
    conn.execute("INSERT INTO requests(ts, request_id, route, model, digest, status, prompt, completion) VALUES (?,?,?,?,?,?,?,?)",
                 (time.time() - 60, "req-old", "chat", "bot", "d1", 200, json.dumps([{"role": "user", "content": "hi"}]), "hello"))
    if judged:
        conn.execute(OLD_JUDGE)
        conn.execute("INSERT INTO judge_scores VALUES ('req-old', 'd1', 0.7, 'http://judge', ?, 'Score: 7')", (time.time(),))
    conn.commit()
    conn.close()


def _version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def test_a_new_log_is_created_at_the_newest_version(tmp_path: Path) -> None:
    path = tmp_path / "serve" / "requests.db"
    requestlog.connect(path).close()
    assert _version(path) == len(requestlog.MIGRATIONS)
    assert requestlog.query(path) == [] and requestlog.quality_by_digest(path) == {} and not requestlog.has_judge_scores(path)


def test_an_old_log_with_judge_scores_is_migrated_in_place_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "requests.db"
    _old_log(path, judged=True)
    assert _version(path) == 0
    log = requestlog.RequestLog(path, log_content=True)
    try:
        log.record({"request_id": "req-new", "route": "chat", "model": "bot", "digest": "d1", "status": 200,
                    "prompt": [{"role": "user", "content": "again"}], "completion": "sure"})
        log.flush()
    finally:
        log.close()
    assert _version(path) == len(requestlog.MIGRATIONS)
    rows = requestlog.requests_of(path, "d1", with_completion=True)
    assert [r["request_id"] for r in rows] == ["req-old", "req-new"]
    assert requestlog.decode_prompt(rows[1]["prompt"]) == [{"role": "user", "content": "again"}]
    assert requestlog.quality_by_digest(path) == {"d1": (0.7, 1)}
    assert [r["request_id"] for r in requestlog.requests_of(path, "d1", min_judge_score=0.5)] == ["req-old"]
    requestlog.connect(path).close()  # opening again is a no-op
    assert _version(path) == len(requestlog.MIGRATIONS)


def test_an_old_log_without_judge_scores_gets_the_table(tmp_path: Path) -> None:
    path = tmp_path / "requests.db"
    _old_log(path, judged=False)
    assert not requestlog.has_judge_scores(path) and requestlog.quality_by_digest(path) == {}  # readers cope before migrating
    conn = requestlog.open_existing(path)
    try:
        requestlog.record_judge_score(conn, "req-old", "d1", 0.4, "http://judge", "{}")
        assert requestlog.scored_request_ids(conn) == {"req-old"} and requestlog.judge_scores(conn, "d1") == [0.4]
    finally:
        conn.close()
    assert _version(path) == len(requestlog.MIGRATIONS) and requestlog.has_judge_scores(path)


def test_a_missing_log_is_a_clear_error(tmp_path: Path) -> None:
    import pytest

    from slmops.errors import DataError

    with pytest.raises(DataError, match="--log-content"):
        requestlog.open_existing(tmp_path / "nope.db")
    assert requestlog.requests_of(tmp_path / "nope.db", "d1") == [] and requestlog.query(tmp_path / "nope.db") == []
