"""The store: ``$SLMOPS_HOME/artifacts/<digest>/`` directories and the ``registry.db`` index.

Writes are atomic: a stage builds its output in ``artifacts/.tmp/<pid>-<id>/``; :meth:`Store.commit`
hashes it, writes the manifest, fsyncs and renames it to ``artifacts/<digest>`` and only then
indexes it in SQLite (WAL, ``BEGIN IMMEDIATE`` for every write, so several processes may write
at once). A crash leaves at most a temp dir or an un-indexed but complete directory; ``gc``
cleans the first and re-adopts the second.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import re
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from slmops import __version__, formats
from slmops._optional import installed_version
from slmops.errors import IntegrityError, StoreError
from slmops.settings import slmops_home
from slmops.store import verified
from slmops.store.artifact import (
    MANIFEST,
    Artifact,
    Manifest,
    Parent,
    StageInfo,
    content_digest,
    fsync_tree,
    iter_content,
    read_manifest,
    write_json_atomic,
)
from slmops.store.documents import Documents
from slmops.store.migrations import migrate
from slmops.store.staging import claim, owned_dir, stale_locks

log = logging.getLogger(__name__)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


MAX_VERSION = 2**63 - 1  # SQLite's INTEGER


def check_version(name: str, version: int) -> int:
    """``version`` when SQLite can hold it, else a StoreError (not an OverflowError deep in sqlite3)."""
    if not 0 <= version <= MAX_VERSION:
        raise StoreError(f"{name}:{version} is not a version", why="versions are whole numbers from 1 up",
                         fix=f"list the versions with `slmops models ls` (or leave the version out for the latest of {name})")
    return version


def check_name(name: str, what: str = "name") -> str:
    if not NAME_RE.match(name):
        raise StoreError(
            f"{what} {name!r} is not valid",
            why="names start with a letter or digit and hold only letters, digits, '.', '_' and '-' (at most 128)",
            fix="pick a name like support-bot or qwen2-tiny",
        )
    return name


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "slmops": __version__}
    for lib in formats.tracked_libs():
        v = installed_version(lib)
        if v:
            versions[lib] = v
    return versions


class Store:
    """One store (artifact directories + SQLite index). Cheap to open; safe across processes."""

    def __init__(self, home: Path | str | None = None) -> None:
        self.home = Path(home).expanduser().resolve() if home else slmops_home()
        self.artifacts = self.home / "artifacts"
        self.tmp = self.artifacts / ".tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.db_path = self.home / "registry.db"
        self._conn = sqlite3.connect(self.db_path, timeout=60, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA busy_timeout=60000")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self.schema_version = migrate(self._conn)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _rows(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        return self._conn.execute(sql, args).fetchall()

    # -- writing artifacts -------------------------------------------------------------------
    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh temp dir inside the store, owned (gc leaves it alone); removed if the block raises or never commits."""
        with owned_dir(self.tmp, f"{os.getpid()}-{uuid.uuid4().hex[:12]}") as path:
            yield path

    def commit(
        self,
        staged: Path,
        *,
        kind: str,
        format: str,
        parents: list[Parent] | None = None,
        stage: StageInfo | None = None,
        metrics: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> Artifact:
        """Hash ``staged``, write its manifest, publish it atomically and index it."""
        if name:
            check_name(name)
        files = iter_content(staged)
        if not files:
            raise StoreError("refusing to commit an empty artifact", why=f"{staged} holds no files")
        digest = content_digest(staged)
        manifest = Manifest(
            kind=kind,  # type: ignore[arg-type]
            format=format,
            digest=digest,
            parents=parents or [],
            stage=stage,
            metrics=metrics or {},
            meta=meta or {},
            versions=library_versions(),
            files=len(files),
            size_bytes=sum(p.stat().st_size for p in files),
        )
        final = self.artifacts / digest
        if final.exists() and self._damaged(final):
            # a damaged copy of this very content is stored: the fresh one replaces it (this is how re-import repairs)
            log.warning("replacing damaged artifact %s with freshly made content", digest[:12])
            trash = self.tmp / f"trash-{digest[:12]}-{uuid.uuid4().hex[:6]}"
            os.rename(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        if final.exists():
            # identical content is already stored: keep the existing directory (and its manifest)
            shutil.rmtree(staged, ignore_errors=True)
            existing = read_manifest(final)
            self._index(existing, extra_parents=manifest.parents, cache_key=stage.cache_key if stage else None, stage_name=stage.name if stage else None)
            artifact = Artifact(final, existing)
        else:
            self._publish(staged, manifest, final)
            artifact = Artifact(final, read_manifest(final))
            verified.mark_verified(artifact)  # just hashed: the first load need not hash it again
            self._index(artifact.manifest, cache_key=stage.cache_key if stage else None, stage_name=stage.name if stage else None)
        if name:
            self.add_version(name, artifact.digest)
        log.info("committed %s %s (%s)", kind, artifact.short, name or "unnamed")
        return artifact

    def adopt(self, staged: Path, manifest: Manifest) -> Artifact:
        """Publish ``staged`` under the manifest it came with (a pulled artifact) once its content hashes to that digest."""
        actual = content_digest(staged)
        if actual != manifest.digest:
            raise IntegrityError(f"refusing to publish {manifest.digest[:12]}", why=f"its content hashes to {actual[:12]}",
                                 fix="pull it again; the copy it came from may be damaged")
        final = self.artifacts / manifest.digest
        if final.exists():
            shutil.rmtree(staged, ignore_errors=True)
        else:
            self._publish(staged, manifest, final)
        artifact = Artifact(final, read_manifest(final))
        self._index(artifact.manifest, cache_key=manifest.stage.cache_key if manifest.stage else None,
                    stage_name=manifest.stage.name if manifest.stage else None)
        return artifact

    def _publish(self, staged: Path, manifest: Manifest, final: Path) -> None:
        """Write ``manifest`` into ``staged``, fsync it and rename it to ``final`` atomically (a racing publisher may win)."""
        write_json_atomic(staged / MANIFEST, manifest.model_dump(mode="json"))
        fsync_tree(staged)
        try:
            os.rename(staged, final)
        except OSError:
            if not final.exists():
                raise
            shutil.rmtree(staged, ignore_errors=True)  # another process published it first
        _fsync_dir(self.artifacts)

    def _index(
        self, m: Manifest, *, extra_parents: list[Parent] | None = None, cache_key: str | None = None, stage_name: str | None = None
    ) -> None:
        with self._write() as c:
            c.execute(
                "INSERT OR IGNORE INTO artifacts(digest, kind, format, stage, size_bytes, created_at) VALUES (?,?,?,?,?,?)",
                (m.digest, m.kind, m.format, m.stage.name if m.stage else None, m.size_bytes, m.created_at),
            )
            for p in [*m.parents, *(extra_parents or [])]:
                if p.digest != m.digest:
                    c.execute("INSERT OR IGNORE INTO edges(child, parent, role) VALUES (?,?,?)", (m.digest, p.digest, p.role))
            if cache_key:
                c.execute(
                    "INSERT OR REPLACE INTO runs(cache_key, stage, digest, created_at) VALUES (?,?,?,?)",
                    (cache_key, stage_name or "", m.digest, _now()),
                )

    # -- reading -----------------------------------------------------------------------------
    def get(self, digest: str) -> Artifact:
        row = self._rows("SELECT digest FROM artifacts WHERE digest = ?", digest)
        path = self.artifacts / digest
        if not row or not path.is_dir():
            raise StoreError(f"no artifact sha256:{digest[:12]} in {self.home}", fix="list what is stored with `slmops models ls`")
        return Artifact(path, read_manifest(path))

    def find_prefix(self, prefix: str) -> Artifact:
        prefix = prefix.lower()
        if not re.fullmatch(r"[0-9a-f]{4,64}", prefix):
            raise StoreError(f"sha256:{prefix} is not a digest prefix", why="use at least 4 hex digits")
        rows = self._rows("SELECT digest FROM artifacts WHERE digest LIKE ? LIMIT 2", prefix + "%")
        if not rows:
            raise StoreError(f"no artifact matches sha256:{prefix}", fix="list digests with `slmops models ls --all`")
        if len(rows) > 1:
            raise StoreError(f"sha256:{prefix} is ambiguous", fix="give more hex digits")
        return self.get(rows[0]["digest"])

    def cached(self, cache_key: str) -> Artifact | None:
        """The artifact a run with ``cache_key`` made, unless it is gone or damaged (then the run is redone)."""
        rows = self._rows("SELECT digest FROM runs WHERE cache_key = ?", cache_key)
        if not rows:
            return None
        try:
            art = self.get(rows[0]["digest"])
        except StoreError:
            return None
        if verified.mismatch(art) is not None:
            log.warning("cached result %s is damaged; running the step again", art.short)
            return None
        return art

    def _damaged(self, path: Path) -> bool:
        try:
            return verified.mismatch(Artifact(path, read_manifest(path))) is not None
        except StoreError:
            return True

    def exists(self, digest: str) -> bool:
        return bool(self._rows("SELECT 1 FROM artifacts WHERE digest = ?", digest))

    def artifacts_list(self, *, kind: str | None = None, named_only: bool = True) -> list[dict[str, Any]]:
        """One row per (name, version), or per artifact with ``named_only=False``."""
        if named_only:
            sql = (
                "SELECT v.name, v.version, a.digest, a.kind, a.format, a.stage, a.size_bytes, v.created_at "
                "FROM versions v JOIN artifacts a ON a.digest = v.digest"
            )
        else:
            sql = (
                "SELECT (SELECT name FROM versions v WHERE v.digest = a.digest ORDER BY version DESC LIMIT 1) AS name, "
                "(SELECT version FROM versions v WHERE v.digest = a.digest ORDER BY version DESC LIMIT 1) AS version, "
                "a.digest, a.kind, a.format, a.stage, a.size_bytes, a.created_at FROM artifacts a"
            )
        rows = [dict(r) for r in self._rows(sql)]
        if kind:
            rows = [r for r in rows if r["kind"] == kind]
        for r in rows:
            r["aliases"] = [a["alias"] for a in self._rows(
                "SELECT alias FROM aliases WHERE name = ? AND version = ? ORDER BY alias", r["name"], r["version"])] if r["name"] else []
            r["tags"] = self.tags(r["digest"])
        return sorted(rows, key=lambda r: (r["name"] or "~", r["version"] or 0, r["created_at"]))

    # -- names, versions, aliases, tags --------------------------------------------------------
    def add_version(self, name: str, digest: str) -> int:
        """Register ``digest`` as the next version of ``name`` (returns the existing one if it is the latest)."""
        check_name(name)
        with self._write() as c:
            last = c.execute("SELECT version, digest FROM versions WHERE name = ? ORDER BY version DESC LIMIT 1", (name,)).fetchone()
            if last and last["digest"] == digest:
                return int(last["version"])
            version = (last["version"] if last else 0) + 1
            c.execute("INSERT INTO versions(name, version, digest, created_at) VALUES (?,?,?,?)", (name, version, digest, _now()))
        return version

    def versions(self, name: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self._rows("SELECT version, digest, created_at FROM versions WHERE name = ? ORDER BY version", name)]

    def names_of(self, digest: str) -> list[str]:
        return [f"{r['name']}:{r['version']}" for r in self._rows("SELECT name, version FROM versions WHERE digest = ? ORDER BY name, version", digest)]

    def lookup(self, name: str, *, version: int | None = None, alias: str | None = None) -> Artifact:
        if version is not None:
            check_version(name, version)
        if alias is not None:
            row = self._rows("SELECT version FROM aliases WHERE name = ? AND alias = ?", name, alias)
            if not row:
                known = [r["alias"] for r in self._rows("SELECT alias FROM aliases WHERE name = ?", name)]
                raise StoreError(f"{name}@{alias} is not set", why=f"aliases of {name}: {', '.join(known) or 'none'}",
                                 fix=f"set it with `slmops models alias {name}@{alias} {name}:VERSION`")
            version = int(row[0]["version"])
        if version is None:
            rows = self._rows("SELECT digest, version FROM versions WHERE name = ? ORDER BY version DESC LIMIT 1", name)
        else:
            rows = self._rows("SELECT digest, version FROM versions WHERE name = ? AND version = ?", name, version)
        if not rows:
            have = self.versions(name)
            why = f"{name} has versions {', '.join(str(v['version']) for v in have)}" if have else f"nothing is named {name}"
            raise StoreError(f"no artifact {name}{'' if version is None else f':{version}'}", why=why,
                             fix="list names with `slmops models ls`")
        return self.get(rows[0]["digest"])

    def set_alias(self, name: str, alias: str, version: int) -> None:
        check_name(alias, "alias")
        check_version(name, version)
        if not self._rows("SELECT 1 FROM versions WHERE name = ? AND version = ?", name, version):
            raise StoreError(f"cannot point {name}@{alias} at {name}:{version}", why="that version does not exist")
        with self._write() as c:
            c.execute("INSERT OR REPLACE INTO aliases(name, alias, version, updated_at) VALUES (?,?,?,?)", (name, alias, version, _now()))

    def remove_alias(self, name: str, alias: str) -> bool:
        with self._write() as c:
            return c.execute("DELETE FROM aliases WHERE name = ? AND alias = ?", (name, alias)).rowcount > 0

    def aliases(self, name: str) -> dict[str, int]:
        return {r["alias"]: int(r["version"]) for r in self._rows("SELECT alias, version FROM aliases WHERE name = ?", name)}

    def tag(self, digest: str, tag: str) -> None:
        check_name(tag, "tag")
        with self._write() as c:
            c.execute("INSERT OR IGNORE INTO tags(digest, tag) VALUES (?,?)", (digest, tag))

    def untag(self, digest: str, tag: str) -> bool:
        with self._write() as c:
            return c.execute("DELETE FROM tags WHERE digest = ? AND tag = ?", (digest, tag)).rowcount > 0

    def tags(self, digest: str) -> list[str]:
        return [r["tag"] for r in self._rows("SELECT tag FROM tags WHERE digest = ? ORDER BY tag", digest)]

    def documents(self, table: str) -> Documents:
        """The named JSON documents of one of the store's tables (``profiles``); see :mod:`slmops.store.documents`."""
        return Documents(self, table)

    # -- lineage -------------------------------------------------------------------------------
    def parents(self, digest: str) -> list[tuple[str, str]]:
        return [(r["parent"], r["role"]) for r in self._rows("SELECT parent, role FROM edges WHERE child = ? ORDER BY role, parent", digest)]

    def children(self, digest: str) -> list[tuple[str, str]]:
        return [(r["child"], r["role"]) for r in self._rows("SELECT child, role FROM edges WHERE parent = ? ORDER BY role, child", digest)]

    def lineage(self, digest: str, *, direction: str = "up", depth: int = 32) -> dict[str, Any]:
        """A tree of ancestors (``up``) or descendants (``down``) as nested dicts."""
        def node(d: str, role: str | None, level: int, seen: frozenset[str]) -> dict[str, Any]:
            row = self._rows("SELECT kind, format, stage FROM artifacts WHERE digest = ?", d)
            info: dict[str, Any] = {"digest": d, "role": role, "names": self.names_of(d)}
            info.update(dict(row[0]) if row else {"kind": None, "format": None, "stage": None, "missing": True})
            nxt = self.parents(d) if direction == "up" else self.children(d)
            info["children"] = [] if level >= depth or d in seen else [node(x, r, level + 1, seen | {d}) for x, r in nxt]
            return info

        return node(digest, None, 0, frozenset())

    # -- removal, gc, verify -----------------------------------------------------------------
    def remove(self, digest: str, *, force: bool = False) -> list[str]:
        """Delete an artifact (and with ``force`` its descendants); returns the removed digests."""
        kids = self.children(digest)
        if kids and not force:
            raise StoreError(
                f"artifact {digest[:12]} has {len(kids)} descendant(s)",
                why="removing it would break their lineage",
                fix="remove them first, or pass --force to remove the whole subtree",
            )
        removed: list[str] = []
        for kid, _ in kids:
            if self.exists(kid):
                removed += self.remove(kid, force=True)
        with self._write() as c:
            names = c.execute("SELECT name, version FROM versions WHERE digest = ?", (digest,)).fetchall()
            for n in names:
                c.execute("DELETE FROM aliases WHERE name = ? AND version = ?", (n["name"], n["version"]))
            c.execute("DELETE FROM artifacts WHERE digest = ?", (digest,))
            c.execute("DELETE FROM edges WHERE parent = ? OR child = ?", (digest, digest))
        path = self.artifacts / digest
        verified.forget(digest, path)
        if path.exists():
            trash = self.tmp / f"trash-{digest[:12]}-{uuid.uuid4().hex[:6]}"
            os.rename(path, trash)
            shutil.rmtree(trash, ignore_errors=True)
        return [*removed, digest]

    def gc(self, *, prune: bool = False, dry_run: bool = False) -> dict[str, list[str]]:
        """Clean what crashes leave behind; with ``prune`` also drop unnamed, untagged leaves' chains."""
        report: dict[str, list[str]] = {"temp_removed": [], "temp_kept": [], "adopted": [], "orphans_removed": [], "pruned": []}
        for entry in sorted(self.tmp.iterdir()):
            with claim(self.tmp, entry.name) as free:  # a live job's folder stays, whatever its name
                if not free:
                    report["temp_kept"].append(entry.name)
                    continue
                report["temp_removed"].append(entry.name)
                if not dry_run:
                    shutil.rmtree(entry, ignore_errors=True)
        if not dry_run:
            stale_locks(self.tmp)
        indexed = {r["digest"] for r in self._rows("SELECT digest FROM artifacts")}
        for entry in self.artifacts.iterdir():
            if entry.name.startswith(".") or entry.name in indexed:
                continue
            try:
                m = read_manifest(entry)
                Artifact(entry, m).verify()
                if m.digest != entry.name:
                    raise IntegrityError("directory name does not match digest")
                report["adopted"].append(entry.name)
                if not dry_run:
                    self._index(m)
            except (StoreError, OSError):
                report["orphans_removed"].append(entry.name)
                if not dry_run:
                    shutil.rmtree(entry, ignore_errors=True)
        if not dry_run:  # markers of artifacts no longer stored (or of older states of their files)
            verified.prune(self.home / "cache" / "verified", keep={r["digest"]: self.artifacts / r["digest"] for r in self._rows("SELECT digest FROM artifacts")})
        if prune:
            keep: set[str] = set()
            roots = {r["digest"] for r in self._rows("SELECT digest FROM versions UNION SELECT digest FROM tags")}
            stack = list(roots)
            while stack:
                d = stack.pop()
                if d in keep:
                    continue
                keep.add(d)
                stack += [p for p, _ in self.parents(d)]
            for d in sorted(indexed - keep):
                if self.exists(d) and not ({c for c, _ in self.children(d)} & keep):
                    report["pruned"].append(d)
                    if not dry_run:
                        self.remove(d, force=True)
        return report

    def verify(self, digests: list[str] | None = None) -> list[dict[str, Any]]:
        """Re-hash artifacts; one result row per artifact (``ok`` False names the problem)."""
        targets = digests or [r["digest"] for r in self._rows("SELECT digest FROM artifacts ORDER BY created_at")]
        results = []
        for d in targets:
            row: dict[str, Any] = {"digest": d, "names": self.names_of(d), "ok": True, "problem": None}
            try:
                art = self.get(d)
                art.verify()
                verified.mark_verified(art)
            except StoreError as exc:
                verified.forget(d, self.artifacts / d)
                row.update(ok=False, problem=exc.message)
            results.append(row)
        return results


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_store(home: Path | str | None = None) -> Store:
    """Open (creating and migrating if needed) the store at ``home`` or ``$SLMOPS_HOME``."""
    return Store(home)
