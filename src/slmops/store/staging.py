"""Owned folders in the store's staging area (``artifacts/.tmp/``), which ``models gc`` never takes from a live owner.

Everything a running job keeps in ``.tmp`` — the runner's output folder, a GGUF export's f32
intermediate, an evaluation's resumable progress — is made with :func:`owned_dir`. The owner holds an
exclusive advisory lock (``flock``) on ``.tmp-owners/<name>.lock`` (next to ``.tmp``) for as long as it uses
``.tmp/<name>`` and writes its pid and start time there. The OS drops the lock when the owner exits,
even by SIGKILL, so :func:`claim` (what gc calls) can tell a live job's folder from a crash's leftover
without trusting pids, which the OS reuses.

Lock files are unlinked by whoever removes them while still holding the lock; a process that was
waiting on the old file notices (its inode is no longer the one at the path) and locks the new one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from slmops.errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks; gc falls back to the pid in the name
    fcntl = None  # type: ignore[assignment]


def owners_dir(tmp_root: Path) -> Path:
    """Where the lock files of ``tmp_root``'s folders live (a sibling, so ``tmp_root`` holds only folders)."""
    return tmp_root.with_name(tmp_root.name + "-owners")


def lock_path(tmp_root: Path, name: str) -> Path:
    return owners_dir(tmp_root) / f"{name}.lock"


def _lock(lock: Path, wait_s: float) -> int | None:
    """An fd holding the exclusive lock on ``lock`` (created if need be), or None when another holds it past ``wait_s``."""
    assert fcntl is not None
    lock.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)
            continue
        try:
            current = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            return fd
        os.close(fd)  # the previous holder unlinked it: lock the new file


def holder(tmp_root: Path, name: str) -> str:
    """Who owns ``name`` (as its lock file says), for messages."""
    try:
        return lock_path(tmp_root, name).read_text().strip() or "?"
    except OSError:
        return "?"


@contextlib.contextmanager
def owned_dir(tmp_root: Path, name: str, *, remove: bool = True, wait_s: float = 30.0) -> Iterator[Path]:
    """Own ``tmp_root/name`` (created if missing) for the block; gc leaves it alone meanwhile.

    ``remove`` deletes the folder when the block ends (keep it, e.g. for resumable progress, with
    ``remove=False``: once unowned, gc may clear it). A folder another live process owns is waited
    for up to ``wait_s`` seconds, then refused.
    """
    path = tmp_root / name
    if fcntl is None:  # pragma: no cover
        path.mkdir(parents=True, exist_ok=True)
        try:
            yield path
        finally:
            if remove:
                shutil.rmtree(path, ignore_errors=True)
        return
    lock = lock_path(tmp_root, name)
    fd = _lock(lock, wait_s)
    if fd is None:
        raise ConfigError(f"another process ({holder(tmp_root, name)}) is using {path}", why="a job owns that staging folder",
                          fix="wait for it to finish, or stop it")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}".encode(), 0)
        path.mkdir(parents=True, exist_ok=True)
        yield path
    finally:
        try:
            if remove:
                shutil.rmtree(path, ignore_errors=True)
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)


def scratch_dir(out: Path, prefix: str) -> contextlib.AbstractContextManager[Path]:
    """A fresh owned scratch folder next to a stage's output folder ``out``, removed when the block ends."""
    return owned_dir(Path(out).parent, f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:12]}")


@contextlib.contextmanager
def claim(tmp_root: Path, name: str) -> Iterator[bool]:
    """Try to take ``name`` from its owner without waiting: yields False when a live process owns it.

    While the block runs (with True) nobody else can own the folder, so gc removes it safely; the
    lock file goes with it.
    """
    if fcntl is None:  # pragma: no cover
        yield True
        return
    lock = lock_path(tmp_root, name)
    fd = _lock(lock, 0.0)
    if fd is None:
        yield False
        return
    try:
        yield True
    finally:
        try:
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)


def stale_locks(tmp_root: Path) -> list[str]:
    """Names of lock files whose folder is gone and whose owner is gone too (removed while claimed)."""
    owners = owners_dir(tmp_root)
    if not owners.is_dir():
        return []
    gone = []
    for lock in owners.glob("*.lock"):
        name = lock.name.removesuffix(".lock")
        if (tmp_root / name).exists():
            continue
        with claim(tmp_root, name) as free:
            if free:
                gone.append(name)
    return gone
