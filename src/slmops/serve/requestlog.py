"""The request log: one SQLite row per request — metadata by default, prompts and completions only when asked.

Rows are written by a background thread in small transactions, so the event loop never waits on
the disk. The default file is ``$SLMOPS_HOME/serve/requests.db`` (WAL, readable while the server
writes); ``slmops logs`` reads it through :func:`query`.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

COLUMNS = (
    "ts", "request_id", "route", "model", "version", "digest", "status", "error", "stream",
    "prompt_tokens", "completion_tokens", "queue_s", "ttft_s", "latency_s", "client", "user", "prompt", "completion",
)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS requests (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  {", ".join(f"{c} {'REAL' if c in ('ts', 'queue_s', 'ttft_s', 'latency_s') else 'INTEGER' if c in ('status', 'stream', 'prompt_tokens', 'completion_tokens') else 'TEXT'}" for c in COLUMNS)}
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests(ts);
CREATE INDEX IF NOT EXISTS requests_model ON requests(model, ts);
"""
_CONTENT = ("prompt", "completion")


def default_path(home: Path) -> Path:
    return home / "serve" / "requests.db"


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(_SCHEMA)
    return conn


class RequestLog:
    """Appends request records from any thread; a writer thread batches them into SQLite."""

    def __init__(self, path: Path, *, log_content: bool = False) -> None:
        self.path = Path(path)
        self.log_content = log_content
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=10_000)
        self._conn = _connect(self.path)
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
    if not Path(path).is_file():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        where, args = [], []
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        if model:
            where.append("(model = ? OR version = ?)")
            args += [model, model]
        sql = "SELECT * FROM requests" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY ts DESC, id DESC LIMIT ?"
        rows = [dict(r) for r in conn.execute(sql, (*args, limit))]
    finally:
        conn.close()
    for r in rows:
        r["time"] = datetime.fromtimestamp(r["ts"], UTC).isoformat(timespec="seconds")
    return rows
