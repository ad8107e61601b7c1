"""``models gc`` never takes a staging folder from a live job, whatever its name; a dead job's folders go (issue 17, item 7).

The job is a real second process holding the runner's output folder and a GGUF-export-style
scratch folder (``.tmp/gguf-…``) while gc runs in this one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from slmops.errors import ConfigError
from slmops.store import Store
from slmops.store.staging import owned_dir, owners_dir

JOB = textwrap.dedent(
    """
    import sys
    from slmops.store import Store
    from slmops.store.staging import scratch_dir

    store = Store(sys.argv[1])
    with store.staging() as out, scratch_dir(out, "gguf-") as scratch:
        (out / "model.gguf").write_bytes(b"q" * 1000)
        (scratch / "model.f32.gguf").write_bytes(b"f" * 4000)
        print(out.name, scratch.name, flush=True)
        sys.stdin.readline()  # the test lets the job go on after its gc
        (out / "model.gguf").write_bytes((scratch / "model.f32.gguf").read_bytes()[:1000])
        art = store.commit(out, kind="gguf", format="gguf", name="exported")
    print("committed", art.short, flush=True)
    """
)


def start_job(home: Path) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen([sys.executable, "-c", JOB, str(home)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    names = proc.stdout.readline().split()
    assert len(names) == 2, f"the job did not start (exit {proc.poll()})"
    return proc, names


def test_gc_keeps_a_running_jobs_folders_and_clears_leftovers(store: Store, slmops_home: Path) -> None:
    proc, names = start_job(slmops_home)
    try:
        # a crash's leftovers: unowned, one of them named after a live pid (pid 1), which says nothing about ownership
        for leftover in ("1-0123456789ab", "gguf-dead", "eval-abandoned"):
            (store.tmp / leftover).mkdir()
            (store.tmp / leftover / "partial").write_bytes(b"x")
        report = store.gc()
        assert sorted(report["temp_kept"]) == sorted(names)
        assert sorted(report["temp_removed"]) == ["1-0123456789ab", "eval-abandoned", "gguf-dead"]
        assert sorted(p.name for p in store.tmp.iterdir()) == sorted(names)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("go on\n")
        proc.stdin.flush()
        assert proc.stdout.readline().startswith("committed"), "the job must finish after gc ran"
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert store.lookup("exported").manifest.kind == "gguf"
    assert list(store.tmp.iterdir()) == [] and list(owners_dir(store.tmp).iterdir()) == []


def test_a_killed_jobs_folders_are_collected(store: Store, slmops_home: Path) -> None:
    proc, names = start_job(slmops_home)
    proc.send_signal(signal.SIGKILL)  # no cleanup code runs; the OS drops its locks
    proc.wait(timeout=60)
    assert sorted(p.name for p in store.tmp.iterdir()) == sorted(names)
    assert sorted(store.gc(dry_run=True)["temp_removed"]) == sorted(names)
    assert sorted(p.name for p in store.tmp.iterdir()) == sorted(names)  # a dry run touches nothing
    report = store.gc()
    assert sorted(report["temp_removed"]) == sorted(names) and report["temp_kept"] == []
    assert list(store.tmp.iterdir()) == [] and list(owners_dir(store.tmp).iterdir()) == []


def test_owned_dir_is_exclusive_and_kept_when_asked(store: Store) -> None:
    with owned_dir(store.tmp, "eval-key", remove=False) as work:
        (work / "progress.jsonl").write_text("{}\n")
        with pytest.raises(ConfigError, match=rf"another process \(pid {os.getpid()} since .*\) is using"), \
                owned_dir(store.tmp, "eval-key", wait_s=0.2):
            pass
        assert store.gc()["temp_kept"] == ["eval-key"]
    assert (work / "progress.jsonl").is_file()  # kept for the resume, now unowned
    with owned_dir(store.tmp, "eval-key", remove=False) as again:  # a resume owns it again, contents intact
        assert (again / "progress.jsonl").read_text() == "{}\n"
    assert store.gc()["temp_removed"] == ["eval-key"]


def test_gc_prunes_verification_markers_of_removed_artifacts(store: Store) -> None:
    from slmops.store.verified import cache_dir, is_verified, mark_verified

    with store.staging() as tmp:
        (tmp / "f").write_text("one")
        a = store.commit(tmp, kind="dataset", format="x", name="a")
    with store.staging() as tmp:
        (tmp / "f").write_text("two")
        b = store.commit(tmp, kind="dataset", format="x")
    markers = cache_dir(a.path)
    (a.path / "f").touch()  # same bytes, new mtime: a second marker for a
    mark_verified(a)
    assert len(list(markers.glob(f"{a.digest}-*"))) == 2
    store.remove(b.digest)
    store.gc()
    assert [m.name.split("-")[0] for m in markers.iterdir()] == [a.digest] and is_verified(a)
