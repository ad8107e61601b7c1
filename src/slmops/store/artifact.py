"""Artifacts: a directory of files plus ``manifest.json``, identified by the sha256 of its content.

The digest covers every file except ``manifest.json`` (relative path and bytes, in sorted order),
so the same content always gets the same digest and a flipped byte anywhere is detected.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from slmops.errors import IntegrityError, StoreError

KINDS = ("dataset", "model", "adapter", "onnx", "gguf", "report")
Kind = Literal["dataset", "model", "adapter", "onnx", "gguf", "report"]
MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
_CHUNK = 1 << 20


class Parent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    digest: str
    role: str = Field(description="Which input of the producing stage this parent was")


class StageInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    version: int
    config: dict[str, Any] = Field(default_factory=dict)
    cache_key: str | None = None


class Manifest(BaseModel):
    """What ``manifest.json`` holds; written once, when the artifact is committed."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    kind: Kind
    format: str
    digest: str
    parents: list[Parent] = Field(default_factory=list)
    stage: StageInfo | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    meta: dict[str, Any] = Field(default_factory=dict, description="Free-form facts (architecture, counts)")
    versions: dict[str, str] = Field(default_factory=dict)
    files: int = 0
    size_bytes: int = 0
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


@dataclass(frozen=True)
class Artifact:
    """A committed artifact: where it is and what its manifest says."""

    path: Path
    manifest: Manifest

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def short(self) -> str:
        return self.manifest.digest[:12]

    def file(self, rel: str) -> Path:
        """A path inside the artifact, refusing anything that escapes it."""
        return contained(self.path, rel)

    def verify(self) -> None:
        """Re-hash the content; raise :class:`IntegrityError` when it no longer matches."""
        actual = content_digest(self.path)
        if actual != self.digest:
            raise IntegrityError(
                f"artifact {self.short} is corrupt",
                why=f"its content hashes to {actual[:12]}, not {self.short}",
                fix="re-import it or re-run the step that made it (the fresh copy replaces the damaged one), or restore it from a backup",
            )


def contained(root: Path, rel: str | os.PathLike[str]) -> Path:
    """Resolve ``rel`` under ``root`` and refuse paths that escape it (``..``, absolute, symlinks)."""
    base = root.resolve()
    target = (base / rel).resolve()
    if target != base and base not in target.parents:
        raise StoreError(f"path {str(rel)!r} escapes {base}", why="paths from manifests, requests and model files must stay inside their folder")
    return target


def iter_content(root: Path) -> list[Path]:
    """Every content file under ``root`` (everything but the manifest), sorted by relative path."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if rel == MANIFEST:
                continue
            if p.is_symlink():
                raise StoreError(f"artifact content may not contain symlinks: {rel}", fix="copy the file instead of linking it")
            files.append(p)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def content_digest(root: Path) -> str:
    """sha256 over (relative path, size, bytes) of every content file, in sorted order."""
    h = hashlib.sha256()
    for p in iter_content(root):
        rel = p.relative_to(root).as_posix().encode()
        h.update(len(rel).to_bytes(8, "big") + rel + p.stat().st_size.to_bytes(8, "big"))
        with open(p, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(path: Path) -> Manifest:
    try:
        return Manifest.model_validate_json((path / MANIFEST).read_text())
    except FileNotFoundError as exc:
        raise StoreError(f"{path} has no {MANIFEST}", why="it is not an slmops artifact") from exc
    except ValueError as exc:
        raise StoreError(f"{path / MANIFEST} is not a valid manifest", why=str(exc).splitlines()[0]) from exc


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temp file, fsync, rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` so a rename after it publishes durable data."""
    for dirpath, _dirs, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(Path(dirpath) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def canonical_json(data: Any) -> str:
    """The canonical text of a JSON-able value (sorted keys, no spaces) used for cache keys."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
