"""``push`` and ``pull``: an artifact and all its ancestors between the store and an object-store remote.

Everything moves by content digest: an artifact whose record is already on the remote is skipped
without reading a byte (a second push of an unchanged model uploads nothing), and a file whose blob
is there is not uploaded again (so a push interrupted at any point resumes where it stopped). A
pull verifies every blob's sha256 while downloading, then the whole artifact's digest, before the
directory is published in the store; files verified by an interrupted pull are kept and re-used.
Names and aliases travel with the artifacts: the remote keeps its own version numbers per name and
maps them by digest, as the local registry does.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slmops import progress
from slmops.errors import IntegrityError, RefError, StoreError
from slmops.store.artifact import MANIFEST, Manifest, contained, file_digest, iter_content
from slmops.store.objects import ObjectStore
from slmops.store.refs import ModelRef, resolve
from slmops.store.registry import Store
from slmops.store.remotes import get_remote
from slmops.store.staging import owned_dir

log = logging.getLogger(__name__)


@dataclass
class TransferReport:
    """What a push or pull did; ``bytes_transferred`` 0 means nothing had to move."""

    direction: str
    remote: str
    ref: str
    digest: str
    artifacts: list[str] = field(default_factory=list)  # the closure, parents first
    transferred: list[str] = field(default_factory=list)  # artifacts that moved
    files_transferred: int = 0
    bytes_transferred: int = 0
    bytes_verified: int = 0
    names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def open_remote(store: Store, remote: str | None = None) -> ObjectStore:
    return ObjectStore(get_remote(store, remote))


def record_key(objects: ObjectStore, digest: str) -> str:
    return objects.key("artifacts", f"{digest}.json")


# -- moving files ------------------------------------------------------------------------------
def upload_tree(objects: ObjectStore, root: Path, report: TransferReport, bar: progress.Task | None = None) -> list[dict[str, Any]]:
    """Upload every content file under ``root`` whose blob is missing; returns the file list (path, sha256, size)."""
    files = []
    for p in iter_content(root):
        sha, size = file_digest(p), p.stat().st_size
        files.append({"path": p.relative_to(root).as_posix(), "sha256": sha, "size": size})
        if not objects.exists(objects.blob_key(sha)):
            objects.put_blob(p, sha)
            if bar:
                bar.advance(size)
            report.files_transferred += 1
            report.bytes_transferred += size
    return files


def download_tree(objects: ObjectStore, files: list[dict[str, Any]], root: Path, report: TransferReport,
                  bar: progress.Task | None = None) -> None:
    """Download ``files`` into ``root``, verifying each; files already there with the right sha256 are kept."""
    for entry in files:
        rel = str(entry["path"])
        if rel == MANIFEST:
            raise IntegrityError(f"remote record lists {MANIFEST} as content", why="the manifest is never part of the content")
        dest = contained(root, rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        size = int(entry["size"])
        if dest.is_file() and dest.stat().st_size == size and file_digest(dest) == entry["sha256"]:
            report.bytes_verified += size  # verified by an earlier, interrupted pull
            if bar:
                bar.advance(size)
            continue
        objects.get_blob(str(entry["sha256"]), size, dest, bar.advance if bar else None)
        report.files_transferred += 1
        report.bytes_transferred += size
        report.bytes_verified += size


def ensure_on_remote(store: Store, objects: ObjectStore, digest: str, report: TransferReport, bar: progress.Task | None = None) -> bool:
    """Upload one stored artifact unless the remote has its record; True when it had to move."""
    if objects.exists(record_key(objects, digest)):
        return False
    art = store.get(digest)
    files = upload_tree(objects, art.path, report, bar)
    objects.put_json(record_key(objects, digest), {"manifest": art.manifest.model_dump(mode="json"), "files": files,
                                                   "names": store.names_of(digest)})
    report.transferred.append(digest)
    return True


def fetch_artifact(store: Store, objects: ObjectStore, digest: str, report: TransferReport, bar: progress.Task | None = None,
                   record: dict[str, Any] | None = None) -> bool:
    """Download one artifact into the store unless it is there; True when it had to move."""
    if store.exists(digest):
        return False
    record = record or _record(objects, digest)
    manifest = Manifest.model_validate(record["manifest"])
    if manifest.digest != digest:
        raise IntegrityError(f"remote record {digest[:12]} describes {manifest.digest[:12]}", fix="push the artifact again")
    # kept across interrupted pulls (verified files are re-used); owned meanwhile, so gc leaves it alone
    with owned_dir(store.tmp, f"pull-{digest[:24]}", remove=False) as staging:
        download_tree(objects, record["files"], staging, report, bar)
        store.adopt(staging, manifest)
    report.transferred.append(digest)
    return True


def _record(objects: ObjectStore, digest: str) -> dict[str, Any]:
    record = objects.get_json(record_key(objects, digest))
    if record is None:
        raise StoreError(f"remote {objects.spec.name} has no artifact sha256:{digest[:12]}", fix="push it first with `slmops push REF`")
    return record


# -- push ----------------------------------------------------------------------------------------
def push(store: Store, ref: str, *, remote: str | None = None) -> TransferReport:
    """Upload ``ref`` and every ancestor the store holds, then its names and aliases."""
    art = resolve(ref, store)
    objects = open_remote(store, remote)
    closure = _local_closure(store, art.digest)
    report = TransferReport("push", objects.spec.name, ref, art.digest, artifacts=closure)
    missing = [d for d in closure if not objects.exists(record_key(objects, d))]
    total = sum(store.get(d).manifest.size_bytes for d in missing)
    with progress.task(f"push {ref}", total=total) as bar:
        for d in missing:
            ensure_on_remote(store, objects, d, report, bar)
    report.names = _push_names(store, objects, closure)
    log.info("pushed %s to %s: %d artifact(s), %d bytes uploaded", ref, objects.spec.name, len(report.transferred), report.bytes_transferred)
    return report


def _local_closure(store: Store, digest: str) -> list[str]:
    """``digest`` and its stored ancestors, parents before children."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(d: str) -> None:
        if d in seen:
            return
        seen.add(d)
        for parent, _role in store.parents(d):
            if store.exists(parent):
                visit(parent)
            else:
                log.warning("ancestor sha256:%s of sha256:%s is not in this store; its lineage edge travels without it", parent[:12], d[:12])
        order.append(d)

    visit(digest)
    return order


def _push_names(store: Store, objects: ObjectStore, closure: list[str]) -> list[str]:
    wanted = set(closure)
    names: dict[str, list[tuple[int, str]]] = {}
    for d in closure:
        for nv in store.names_of(d):
            name, _, v = nv.rpartition(":")
            names.setdefault(name, []).append((int(v), d))
    carried = []
    for name, local in sorted(names.items()):
        key = objects.key("names", f"{name}.json")
        doc = objects.get_json(key) or {"versions": [], "aliases": {}}
        by_digest = {e["digest"]: int(e["version"]) for e in doc["versions"]}
        for _v, d in sorted(local):
            if d not in by_digest:
                by_digest[d] = max(by_digest.values(), default=0) + 1
                doc["versions"].append({"version": by_digest[d], "digest": d})
        local_digest = {v["version"]: v["digest"] for v in store.versions(name)}
        for alias, v in store.aliases(name).items():
            if local_digest.get(v) in wanted:
                doc["aliases"][alias] = by_digest[local_digest[v]]
        objects.put_json(key, doc)
        carried += [f"{name}:{by_digest[d]}" for _v, d in sorted(local)] + [f"{name}@{a}" for a in sorted(doc["aliases"])]
    return carried


# -- pull ----------------------------------------------------------------------------------------
def resolve_remote(objects: ObjectStore, ref: str) -> str:
    """The digest a reference names on the remote (name, name:N, name@alias, sha256:prefix)."""
    r = ModelRef.parse(ref)
    if r.scheme == "digest":
        hits = [k.rsplit("/", 1)[-1][:-5] for k in objects.list(objects.key("artifacts", r.value)) if k.endswith(".json")]
        if len(hits) != 1:
            raise RefError(f"{ref} matches {len(hits)} artifacts on remote {objects.spec.name}",
                           fix="give more hex digits" if hits else "push it first with `slmops push REF`")
        return hits[0]
    if r.scheme != "name":
        raise RefError(f"cannot pull {ref}", why="a remote holds named and digest-addressed artifacts only", fix="use NAME, NAME:N, NAME@ALIAS or sha256:PREFIX")
    doc = objects.get_json(objects.key("names", f"{r.value}.json"))
    if not doc or not doc["versions"]:
        raise RefError(f"remote {objects.spec.name} has nothing named {r.value}", fix="push it first with `slmops push REF`")
    version = r.version
    if r.alias is not None:
        if r.alias not in doc["aliases"]:
            raise RefError(f"{r.value}@{r.alias} is not set on remote {objects.spec.name}", why=f"aliases there: {', '.join(doc['aliases']) or 'none'}")
        version = int(doc["aliases"][r.alias])
    entries = {int(e["version"]): e["digest"] for e in doc["versions"]}
    if version is None:
        version = max(entries)
    if version not in entries:
        raise RefError(f"remote {objects.spec.name} has no {r.value}:{version}", why=f"versions there: {', '.join(map(str, sorted(entries)))}")
    return str(entries[version])


def pull(store: Store, ref: str, *, remote: str | None = None) -> TransferReport:
    """Download ``ref`` and every ancestor the store lacks, verifying every byte, then carry names and aliases."""
    objects = open_remote(store, remote)
    digest = resolve_remote(objects, ref)
    records: dict[str, dict[str, Any]] = {}
    order: list[str] = []

    def visit(d: str) -> None:
        if d in records or store.exists(d):
            return
        rec = objects.get_json(record_key(objects, d))
        if rec is None:
            if d == digest:
                raise StoreError(f"remote {objects.spec.name} has no artifact sha256:{d[:12]}", fix="push it again")
            log.warning("ancestor sha256:%s is not on remote %s; its lineage edge travels without it", d[:12], objects.spec.name)
            return
        records[d] = rec
        for p in rec["manifest"].get("parents", []):
            visit(p["digest"])
        order.append(d)

    visit(digest)
    report = TransferReport("pull", objects.spec.name, ref, digest, artifacts=[*order] or [digest])
    total = sum(int(f["size"]) for d in order for f in records[d]["files"])
    with progress.task(f"pull {ref}", total=total) as bar:
        for d in order:
            fetch_artifact(store, objects, d, report, bar, records[d])
    names = {nv.rpartition(":")[0] for rec in records.values() for nv in rec.get("names", [])}
    if ModelRef.parse(ref).scheme == "name":
        names.add(ModelRef.parse(ref).value)
    report.names = _pull_names(store, objects, sorted(names), {*order, digest})
    return report


def _pull_names(store: Store, objects: ObjectStore, names: list[str], digests: set[str]) -> list[str]:
    carried = []
    for name in names:
        doc = objects.get_json(objects.key("names", f"{name}.json"))
        if not doc:
            continue
        remote_versions = {int(e["version"]): e["digest"] for e in doc["versions"]}
        local_version: dict[str, int] = {}
        for _v, d in sorted(remote_versions.items()):
            if d in digests and store.exists(d):
                have = [v["version"] for v in store.versions(name) if v["digest"] == d]
                local_version[d] = have[-1] if have else store.add_version(name, d)
                carried.append(f"{name}:{local_version[d]}")
        for alias, rv in sorted(doc["aliases"].items()):
            d = remote_versions.get(int(rv))
            if d in local_version:
                store.set_alias(name, alias, local_version[d])
                carried.append(f"{name}@{alias}")
    return carried

