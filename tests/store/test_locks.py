"""Run locks: a second process is refused with the holder's pid; a SIGKILLed holder never blocks the resume."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slmops.errors import ConfigError
from slmops.store.locks import run_lock

HOLD = """
import sys, time
from pathlib import Path
from slmops.store.locks import run_lock
with run_lock(Path(sys.argv[1]), activity="training this exact run", fix="wait"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_second_holder_is_refused_until_the_first_dies(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "abc"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError) as exc, run_lock(folder, activity="training this exact run", fix="wait for it"):
            pass
        assert f"pid {proc.pid}" in exc.value.message and "training this exact run" in exc.value.message
        assert exc.value.fix == "wait for it" and str(folder) in (exc.value.why or "")
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while True:  # the kernel drops the flock with the killed process
        try:
            with run_lock(folder, activity="x", fix="y"):
                assert (folder / "lock").read_text() == str(os.getpid())
            break
        except ConfigError:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_disabled_lock_takes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "rank1"
    with run_lock(folder, activity="x", fix="y", enabled=False):
        assert not folder.exists()
