"""The request log: one SQLite row per request — metadata by default, prompts and completions only when asked.

This module owns the file: its schema (numbered :data:`MIGRATIONS`, applied by the store's
migration runner and recorded in ``PRAGMA user_version``; a log written before migrations existed
is adopted in place), the writer, and every read the server, ``slmops logs`` and monitor make
(:func:`query`, :func:`requests_of`, the judge scores). Rows are written by a background thread in
small transactions, so the event loop never waits on the disk. The default file is
``$SLMOPS_HOME/serve/requests.db`` (WAL, readable while the server writes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from slmops.errors import DataError
from slmops.store.migrations import migrate

log = logging.getLogger(__name__)

COLUMNS = (
    "ts", "request_id", "route", "model", "version", "digest", "status", "error", "stream",
    "prompt_tokens", "completion_tokens", "queue_s", "ttft_s", "latency_s", "client", "user", "prompt", "completion",
)
_TYPES = {**dict.fromkeys(("ts", "queue_s", "ttft_s", "latency_s"), "REAL"),
          **dict.fromkeys(("status", "stream", "prompt_tokens", "completion_tokens"), "INTEGER")}

#: Numbered schema migrations; never edit a released one, append. ``IF NOT EXISTS`` in the first two
#: adopts a log created before migrations existed (same tables, ``user_version`` 0) in place.
MIGRATIONS: list[str] = [
    # 1: one row per request
    f"""
    CREATE TABLE IF NOT EXISTS requests (
      id INTEGER PRIMARY KEY AUTOINCREMENT,
      {", ".join(f"{c} {_TYPES.get(c, 'TEXT')}" for c in COLUMNS)}
    );
    CREATE INDEX IF NOT EXISTS requests_ts ON requests(ts);
    CREATE INDEX IF NOT EXISTS requests_model ON requests(model, ts)
    """,
    # 2: judge scores of sampled requests (monitor sample, serve --judge), 0-1
    """
    CREATE TABLE IF NOT EXISTS judge_scores (
      request_id TEXT PRIMARY KEY, model_digest TEXT, score REAL, judge TEXT, ts REAL, raw TEXT
    );
    CREATE INDEX IF NOT EXISTS judge_scores_model ON judge_scores(model_digest, ts)
    """,
]
_CONTENT = ("prompt", "completion")


def default_path(home: Path) -> Path:
    return home / "serve" / "requests.db"


def connect(path: Path) -> sqlite3.Connection:
    """A read-write connection (autocommit, WAL) to the log at ``path``, created and migrated to the newest schema."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    migrate(conn, MIGRATIONS)
    return conn


def open_existing(path: Path) -> sqlite3.Connection:
    """:func:`connect` to a log that must already exist (monitor reads traffic a server logged)."""
    if not Path(path).is_file():
        raise DataError(f"no request log at {path}", why="the server has not logged anything there",
                        fix="serve the model with --log-content (or pass --log-db)")
    return connect(Path(path))


@contextlib.contextmanager
def _reader(path: Path) -> Iterator[sqlite3.Connection | None]:
    """A read-only connection (None when there is no log yet), so reading never blocks the server's writes."""
    if not Path(path).is_file():
        yield None
        return
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        yield conn
    finally:
        conn.close()


class RequestLog:
    """Appends request records from any thread; a writer thread batches them into SQLite."""

    def __init__(self, path: Path, *, log_content: bool = False) -> None:
        self.path = Path(path)
        self.log_content = log_content
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=10_000)
        self._conn = connect(self.path)
        self.dropped = 0
        self._thread = threading.Thread(target=self._writer, name="slmops-requestlog", daemon=True)
        self._thread.start()

    def record(self, row: dict[str, Any]) -> None:
        """Queue one record (unknown keys are ignored; content only kept with ``log_content``)."""
        row = {k: row.get(k) for k in COLUMNS}
        row["ts"] = row["ts"] or time.time()
        if not self.log_content:
            for k in _CONTENT:
                row[k] = None
        elif row["prompt"] is not None and not isinstance(row["prompt"], str):
            row["prompt"] = json.dumps(row["prompt"], ensure_ascii=False)
        try:
            self._q.put_nowait(row)
        except queue.Full:
            self.dropped += 1

    def _writer(self) -> None:
        sql = f"INSERT INTO requests({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        stop = False
        while not stop:
            item = self._q.get()
            batch = []
            while item is not None:
                batch.append(item)
                if len(batch) >= 256:
                    break
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
            stop = item is None
            if batch:
                try:
                    with self._conn:
                        self._conn.execute("BEGIN")
                        self._conn.executemany(sql, [tuple(r[c] for c in COLUMNS) for r in batch])
                except sqlite3.Error:
                    log.exception("could not write %d request record(s) to %s", len(batch), self.path)
            for _ in range(len(batch) + (1 if stop else 0)):
                self._q.task_done()

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until queued records are written."""
        deadline = time.monotonic() + timeout
        while self._q.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=10)
        self._conn.close()


def query(path: Path, *, since: float | None = None, model: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Records newest first, optionally since a unix time and for one model id or version."""
    with _reader(path) as conn:
        if conn is None:
            return []
        where, args = [], []
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        if model:
            where.append("(model = ? OR version = ?)")
            args += [model, model]
        sql = "SELECT * FROM requests" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY ts DESC, id DESC LIMIT ?"
        rows = [dict(r) for r in conn.execute(sql, (*args, limit))]
    for r in rows:
        r["time"] = datetime.fromtimestamp(r["ts"], UTC).isoformat(timespec="seconds")
    return rows


def requests_of(path: Path, digest: str, *, since: float | None = None, min_judge_score: float | None = None,
                with_completion: bool = False) -> list[dict[str, Any]]:
    """The successful requests to the model ``digest`` whose prompt was logged, oldest first.

    Each row has ``id, ts, route, request_id, prompt, completion``. ``since`` is a unix time;
    ``min_judge_score`` keeps only requests a judge scored at least that (0-1);
    ``with_completion`` only those whose completion and request id were logged too.
    """
    with _reader(path) as conn:
        if conn is None:
            return []
        where = ["r.status = 200", "r.digest = ?", "r.prompt IS NOT NULL"]
        args: list[Any] = [digest]
        if since is not None:
            where.append("r.ts >= ?")
            args.append(since)
        if with_completion:
            where += ["r.completion IS NOT NULL", "r.request_id IS NOT NULL"]
        join = ""
        if min_judge_score is not None:
            join = " JOIN judge_scores j ON j.request_id = r.request_id"
            where.append("j.score >= ?")
            args.append(min_judge_score)
        sql = (f"SELECT r.id, r.ts, r.route, r.request_id, r.prompt, r.completion FROM requests r{join} "
               f"WHERE {' AND '.join(where)} ORDER BY r.ts, r.id")
        return [dict(r) for r in conn.execute(sql, args)]


def decode_prompt(raw: str | None) -> Any:
    """A logged prompt as it was sent: chat messages (a list of dicts), a completion prompt (str or list), or None."""
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, TypeError):
        return raw


# ---------------------------------------------------------------------- judge scores


def has_judge_scores(path: Path) -> bool:
    """Whether any request in the log has a judge score."""
    with _reader(path) as conn:
        try:
            return conn is not None and conn.execute("SELECT 1 FROM judge_scores LIMIT 1").fetchone() is not None
        except sqlite3.OperationalError:  # a log not migrated yet (read-only readers never migrate): nothing judged
            return False


def scored_request_ids(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT request_id FROM judge_scores")}


def record_judge_score(conn: sqlite3.Connection, request_id: str, model_digest: str, score: float, judge: str, raw: str) -> None:
    """Store one request's judge score (0-1) and the judge's raw reply."""
    conn.execute("INSERT OR REPLACE INTO judge_scores VALUES (?,?,?,?,?,?)", (request_id, model_digest, score, judge, time.time(), raw))


def judge_scores(conn: sqlite3.Connection, model_digest: str) -> list[float]:
    """Every score of ``model_digest``'s requests, oldest first."""
    return [r[0] for r in conn.execute("SELECT score FROM judge_scores WHERE model_digest = ? ORDER BY ts", (model_digest,))]


def quality_by_digest(path: Path) -> dict[str, tuple[float, int]]:
    """``digest -> (mean judge score, scored requests)`` from the log; empty when nothing was judged yet."""
    with _reader(path) as conn:
        if conn is None:
            return {}
        try:
            rows = conn.execute("SELECT model_digest, AVG(score), COUNT(*) FROM judge_scores GROUP BY model_digest").fetchall()
        except sqlite3.OperationalError:  # a log not migrated yet: nothing was judged
            return {}
    return {d: (float(mean), int(n)) for d, mean, n in rows}
