"""Resumable progress for long evaluations: finished examples are appended to a JSONL file as they complete.

A rerun after a crash (or Ctrl-C) with the same model, data and config finds the file, keeps every
complete line and only does the rest. A torn last line (the crash happened mid-write) is ignored.
The eval stage keeps these files in its run's work dir (``runs/<cache key>/progress/``, the stage
context's ``workdir``, which ``slmops models gc`` leaves alone) and removes them once the report is committed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class Checkpoint:
    """Rows keyed by example index, persisted in ``path`` (or kept in memory when ``path`` is None)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.rows: dict[int, dict[str, Any]] = {}
        if path is not None and path.is_file():
            _drop_torn_tail(path)
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                        self.rows[int(row["index"])] = row
                    except (ValueError, KeyError, TypeError):
                        continue  # a torn final line
            if self.rows:
                log.info("resuming: %d example(s) already done in %s", len(self.rows), path)

    @property
    def resumed(self) -> int:
        return len(self.rows)

    def __contains__(self, index: int) -> bool:
        return index in self.rows

    def get(self, index: int) -> dict[str, Any] | None:
        return self.rows.get(index)

    def add_many(self, rows: list[dict[str, Any]]) -> None:
        """Record finished rows (each with an ``index``) and make them durable."""
        for row in rows:
            self.rows[int(row["index"])] = row
        if self.path is None or not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8", errors="backslashreplace") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _drop_torn_tail(path: Path) -> None:
    """Cut a partly written last line so that later appends start on a fresh line."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
