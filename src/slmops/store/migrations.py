"""Numbered schema migrations of ``registry.db``; ``PRAGMA user_version`` records how far we are.

Plain SQL only, so a shared Postgres could take the same schema later. Never edit a released
migration: append a new one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

MIGRATIONS: list[str] = [
    # 1: artifacts, lineage, names/versions, aliases, tags, the stage cache
    """
    CREATE TABLE artifacts (
        digest      TEXT PRIMARY KEY,
        kind        TEXT NOT NULL,
        format      TEXT NOT NULL,
        stage       TEXT,
        size_bytes  INTEGER NOT NULL DEFAULT 0,
        created_at  TEXT NOT NULL
    );
    CREATE TABLE edges (
        child   TEXT NOT NULL REFERENCES artifacts(digest) ON DELETE CASCADE,
        parent  TEXT NOT NULL,
        role    TEXT NOT NULL,
        PRIMARY KEY (child, parent, role)
    );
    CREATE INDEX edges_parent ON edges(parent);
    CREATE TABLE versions (
        name        TEXT NOT NULL,
        version     INTEGER NOT NULL,
        digest      TEXT NOT NULL REFERENCES artifacts(digest) ON DELETE CASCADE,
        created_at  TEXT NOT NULL,
        PRIMARY KEY (name, version)
    );
    CREATE INDEX versions_digest ON versions(digest);
    CREATE TABLE aliases (
        name        TEXT NOT NULL,
        alias       TEXT NOT NULL,
        version     INTEGER NOT NULL,
        updated_at  TEXT NOT NULL,
        PRIMARY KEY (name, alias)
    );
    CREATE TABLE tags (
        digest  TEXT NOT NULL REFERENCES artifacts(digest) ON DELETE CASCADE,
        tag     TEXT NOT NULL,
        PRIMARY KEY (digest, tag)
    );
    CREATE TABLE runs (
        cache_key   TEXT PRIMARY KEY,
        stage       TEXT NOT NULL,
        digest      TEXT NOT NULL REFERENCES artifacts(digest) ON DELETE CASCADE,
        created_at  TEXT NOT NULL
    );
    """,
    # 2: device profiles (named constraints a deployment target imposes)
    """
    CREATE TABLE profiles (
        name        TEXT PRIMARY KEY,
        spec        TEXT NOT NULL,
        updated_at  TEXT NOT NULL
    );
    """,
    # 3: object-store remotes (URL and endpoint only; credentials come from the environment)
    """
    CREATE TABLE remotes (
        name          TEXT PRIMARY KEY,
        url           TEXT NOT NULL,
        endpoint_url  TEXT,
        region        TEXT,
        is_default    INTEGER NOT NULL DEFAULT 0,
        updated_at    TEXT NOT NULL
    );
    """,
]


def migrate(conn: sqlite3.Connection, migrations: Sequence[str] = MIGRATIONS) -> int:
    """Apply every migration newer than the database's ``user_version``; returns the new version.

    ``migrations`` defaults to the registry's; another SQLite file with its own numbered list (the
    request log, :mod:`slmops.monitor.requestlog`) runs through the same function.
    """
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    for number, sql in enumerate(migrations, start=1):
        if number <= current:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            # re-check under the write lock: another process may have migrated meanwhile
            if conn.execute("PRAGMA user_version").fetchone()[0] >= number:
                conn.execute("ROLLBACK")
                continue
            for statement in (s.strip() for s in sql.split(";")):
                if statement:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return conn.execute("PRAGMA user_version").fetchone()[0]
