"""Digest verification on load, cached: an artifact is re-hashed once, then trusted while its files stay unchanged.

Opening a model for a runtime (``generate``, ``eval``, ``serve`` …) calls :func:`ensure_verified`.
The first call hashes the artifact's content and compares it with the digest its manifest records;
on success it leaves a marker ``$SLMOPS_HOME/cache/verified/<digest>-<signature>``. The signature
hashes the artifact's location and every content file's relative path, size, mtime, ctime and
inode, so any write to a file (or a file added, removed or replaced) changes it and the next load
hashes again; an unchanged artifact costs a few ``stat`` calls. :meth:`Store.commit` marks what it
has just hashed, so a freshly made artifact is never hashed twice.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from slmops.errors import IntegrityError
from slmops.settings import slmops_home
from slmops.store.artifact import Artifact, content_digest, iter_content, write_json_atomic

log = logging.getLogger(__name__)


def cache_dir(path: Path) -> Path:
    """Where markers for the artifact at ``path`` live: its own store's home when it is in one."""
    path = Path(path).resolve()
    parent = path.parent
    if parent.name == "artifacts" and (parent.parent / "registry.db").is_file():
        return parent.parent / "cache" / "verified"
    return slmops_home() / "cache" / "verified"


def signature(root: Path) -> str:
    """A hash of where ``root`` is and of every content file's (path, size, mtime, ctime, inode)."""
    root = Path(root).resolve()
    h = hashlib.sha256(str(root).encode() + b"\0")
    for p in iter_content(root):
        st = p.stat()
        rel = p.relative_to(root).as_posix()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\n".encode())
    return h.hexdigest()


def _marker(art: Artifact) -> Path:
    return cache_dir(art.path) / f"{art.digest}-{signature(art.path)[:32]}"


def is_verified(art: Artifact) -> bool:
    """True when ``art`` was hashed and found intact since its files last changed."""
    try:
        return _marker(art).is_file()
    except OSError:
        return False


def mark_verified(art: Artifact) -> None:
    """Record that ``art``'s content matches its digest as its files are now (best effort)."""
    try:
        marker = _marker(art)
        marker.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(marker, {"digest": art.digest, "path": str(art.path)})
    except OSError as exc:  # a read-only store still loads; it just re-hashes next time
        log.debug("cannot record verification of %s: %s", art.short, exc)


def forget(digest: str, path: Path) -> None:
    """Drop every marker of ``digest`` (after a failed check, or when the artifact is removed)."""
    folder = cache_dir(path)
    if folder.is_dir():
        for m in folder.glob(f"{digest}-*"):
            m.unlink(missing_ok=True)


def prune(folder: Path, *, keep: dict[str, Path]) -> None:
    """Remove the markers in ``folder`` except, for each ``digest -> path`` in ``keep``, the one for its files as they are now."""
    if not folder.is_dir():
        return
    current = {f"{digest}-{signature(path)[:32]}" for digest, path in keep.items()}
    for marker in folder.iterdir():
        if not marker.name.startswith(".") and marker.name not in current:
            marker.unlink(missing_ok=True)


def damaged(art: Artifact, actual: str, label: str | None = None) -> IntegrityError:
    """The one-line error for an artifact whose content no longer matches its digest (named as the store names it)."""
    names = [n for n in [label, *_names(art)] if n and not n.startswith("sha256:")]
    names = list(dict.fromkeys(names))  # e.g. "bot (bot:3, sha256:…)" for the reference bot
    who = f"{names[0]} ({', '.join([*names[1:], f'sha256:{art.short}'])})" if names else f"sha256:{art.short}"
    return IntegrityError(
        f"artifact {who} is damaged",
        why=f"its files at {art.path} hash to {actual[:12]}, not the digest its manifest records",
        fix="run `slmops models verify` to list damaged artifacts, then re-import it (`slmops models import …`) "
        "or re-run the step that made it",
    )


def _names(art: Artifact) -> list[str]:
    home = cache_dir(art.path).parents[1]
    if not (home / "registry.db").is_file():
        return []
    from slmops.store.registry import Store

    try:
        with Store(home) as store:
            return store.names_of(art.digest)
    except Exception:  # noqa: BLE001 - only for a nicer message; the error itself must still be raised
        return []


def mismatch(art: Artifact) -> str | None:
    """What ``art``'s files really hash to when that differs from its manifest's digest, else None (cached)."""
    if is_verified(art):
        return None
    actual = content_digest(art.path)
    if actual != art.digest:
        forget(art.digest, art.path)
        return actual
    log.info("verified %s (%s)", art.short, art.path)
    mark_verified(art)
    return None


def ensure_verified(art: Artifact, *, label: str | None = None) -> None:
    """Raise :class:`IntegrityError` when ``art``'s content does not match its digest (hashed once per change)."""
    if (actual := mismatch(art)) is not None:
        raise damaged(art, actual, label)


__all__ = ["cache_dir", "damaged", "ensure_verified", "forget", "is_verified", "mark_verified", "mismatch", "prune", "signature"]
