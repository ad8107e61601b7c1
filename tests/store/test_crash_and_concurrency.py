"""Crash safety and concurrent writers, with real subprocesses."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from slmops.store import Store

WRITER = textwrap.dedent(
    """
    import sys
    from slmops.store import Store
    home, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    s = Store(home)
    for i in range(n):
        with s.staging() as tmp:
            (tmp / "blob.bin").write_bytes(f"{tag}-{i}".encode() * 1000)
            s.commit(tmp, kind="dataset", format="bin", name="shared")
    """
)

CRASHER = textwrap.dedent(
    """
    import os, sys
    from slmops.store import Store
    s = Store(sys.argv[1])
    with s.staging() as tmp:
        (tmp / "weights.bin").write_bytes(b"w" * 100000)
        os.kill(os.getpid(), 9)   # SIGKILL mid-write: no cleanup code runs
    """
)


def test_sigkill_mid_write_leaves_nothing_visible(slmops_home: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", CRASHER, str(slmops_home)], capture_output=True, check=False)
    assert proc.returncode == -9
    store = Store(slmops_home)
    assert store.artifacts_list(named_only=False) == []
    assert [p for p in store.artifacts.iterdir() if not p.name.startswith(".")] == []
    assert len(list(store.tmp.iterdir())) == 1  # the half-written temp dir, invisible
    assert len(store.gc()["temp_removed"]) == 1
    assert list(store.tmp.iterdir()) == []


def test_two_processes_writing_at_once(slmops_home: Path) -> None:
    Store(slmops_home).close()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(slmops_home), tag, "15"], stderr=subprocess.PIPE) for tag in ("a", "b")]
    for p in procs:
        _, errout = p.communicate(timeout=120)
        assert p.returncode == 0, errout.decode()
    store = Store(slmops_home)
    versions = store.versions("shared")
    assert [v["version"] for v in versions] == list(range(1, 31))
    assert len({v["digest"] for v in versions}) == 30
    assert all(r["ok"] for r in store.verify())
    assert store._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
