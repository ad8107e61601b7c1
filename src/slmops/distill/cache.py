"""The teacher response cache: one JSON file per request under ``$SLMOPS_HOME/cache/teacher/``.

The key is the sha256 of the canonical request (endpoint, model, messages, sampling settings,
sample index and seed) — never of the API key, which is neither hashed nor stored. A rerun with
other validation settings, or another run over the same prompts, costs no requests. Files are
written atomically (temp file + rename), so a kill never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from slmops.store.artifact import canonical_json

log = logging.getLogger(__name__)


def request_key(payload: dict[str, Any]) -> str:
    """The cache key of a request payload (any JSON-able mapping)."""
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


class ResponseCache:
    """Get/put teacher responses by request key; ``enabled=False`` makes it a no-op."""

    def __init__(self, root: Path, *, enabled: bool = True) -> None:
        self.root = Path(root)
        self.enabled = enabled
        self.hits = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        if not self.enabled:
            return None
        p = self._path(key)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable teacher cache entry %s: %s", p.name, exc)
            return None
        self.hits += 1
        return data if isinstance(data, dict) else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        if not self.enabled:
            return
        p = self._path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.{id(value)}.tmp")
        try:
            tmp.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
            os.replace(tmp, p)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.warning("could not write the teacher cache entry %s: %s", p.name, exc)
