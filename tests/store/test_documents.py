"""Named JSON documents: the store's public API for small records other packages keep (device profiles)."""

from __future__ import annotations

import sqlite3

import pytest

from slmops.errors import StoreError
from slmops.store import Store


def test_put_get_list_remove_and_survive_a_reopen(store: Store) -> None:
    docs = store.documents("profiles")
    docs.put("pi", {"name": "pi", "max_size_bytes": 300})
    docs.put("laptop", {"name": "laptop"})
    docs.put("pi", {"name": "pi", "max_size_bytes": 200})  # replaced, not added
    assert docs.get("pi") == {"name": "pi", "max_size_bytes": 200} and docs.get("nope") is None
    assert docs.names() == ["laptop", "pi"] and list(docs.all()) == ["laptop", "pi"]
    assert docs.remove("laptop") and not docs.remove("laptop")
    with Store(store.home) as again:
        assert again.documents("profiles").all() == {"pi": {"name": "pi", "max_size_bytes": 200}}
    # the rows live in the table the store's migrations create
    with sqlite3.connect(store.db_path) as conn:
        assert conn.execute("SELECT name FROM profiles").fetchall() == [("pi",)]


def test_only_tables_the_migrations_made(store: Store) -> None:
    with pytest.raises(StoreError, match="no document table 'artifacts'"):
        store.documents("artifacts")
