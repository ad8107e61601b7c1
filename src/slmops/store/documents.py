"""Named JSON documents in the store's index: the public way for other packages to keep small records.

A document table has the columns ``name``, ``spec`` (JSON text) and ``updated_at``; its schema is a
numbered migration in :mod:`slmops.store.migrations`, and :data:`TABLES` lists the ones that exist
(``profiles``: device profiles, kept by :mod:`slmops.deploy.profiles`). Reach one with
``store.documents("profiles")``; writes are single ``BEGIN IMMEDIATE`` transactions like every
other write to the index.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from slmops.errors import StoreError

if TYPE_CHECKING:
    from slmops.store.registry import Store

#: Tables of named documents, each created by a migration: table -> what it holds.
TABLES: dict[str, str] = {"profiles": "device profiles"}


class Documents:
    """Put, get, list and remove the named JSON documents of one table."""

    def __init__(self, store: Store, table: str) -> None:
        if table not in TABLES:
            raise StoreError(f"the store has no document table {table!r}", fix=f"tables: {', '.join(TABLES)} (a new one needs a migration)")
        self._store = store
        self.table = table

    def put(self, name: str, doc: dict[str, Any]) -> None:
        """Create or replace the document ``name``."""
        with self._store._write() as c:
            c.execute(f"INSERT OR REPLACE INTO {self.table}(name, spec, updated_at) VALUES (?,?,?)",
                      (name, json.dumps(doc, sort_keys=True), datetime.now(UTC).isoformat(timespec="seconds")))

    def get(self, name: str) -> dict[str, Any] | None:
        """The document ``name``, or None."""
        rows = self._store._rows(f"SELECT spec FROM {self.table} WHERE name = ?", name)
        return json.loads(rows[0]["spec"]) if rows else None

    def all(self) -> dict[str, dict[str, Any]]:
        """Every document by name, in name order."""
        return {r["name"]: json.loads(r["spec"]) for r in self._store._rows(f"SELECT name, spec FROM {self.table} ORDER BY name")}

    def names(self) -> list[str]:
        return [r["name"] for r in self._store._rows(f"SELECT name FROM {self.table} ORDER BY name")]

    def remove(self, name: str) -> bool:
        """Delete ``name``; False when there was none."""
        with self._store._write() as c:
            return c.execute(f"DELETE FROM {self.table} WHERE name = ?", (name,)).rowcount > 0
