"""Crash safety: a generation killed with SIGKILL continues where it stopped, with no duplicate and no lost record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from slmops.data.io import dataset_splits, read_dataset


def _work_file(home: Path) -> Path | None:
    found = list((home / "runs").glob("*/answers.jsonl")) if (home / "runs").exists() else []
    return found[0] if found else None


def test_kill_and_resume(store, prompts, teacher_server, slmops_home, cli):
    teacher_server.script.queue.extend(["slow:0.15"] * 200)  # every answer takes a while
    ref = f"sha256:{prompts.digest}"
    args = [
        "distill",
        "generate",
        "--prompts",
        ref,
        "--base-url",
        teacher_server.url,
        "--model",
        "m",
        "--concurrency",
        "2",
        "--keep-work",
        "--keep-duplicates",
        "--json",
    ]
    env = {**os.environ, "SLMOPS_HOME": str(slmops_home)}
    proc = subprocess.Popen([sys.executable, "-m", "slmops", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            wf = _work_file(slmops_home)
            if wf is not None and wf.read_text().count("\n") >= 6:
                break
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    wf = _work_file(slmops_home)
    assert wf is not None
    before = [json.loads(x)["key"] for x in wf.read_text().splitlines()]
    assert 6 <= len(before) < 20, "the kill should land mid-run"
    with open(wf, "a") as f:  # as if the kill had torn a line in half
        f.write('{"key": "train/0/0", "text": "half a li')
    calls = teacher_server.script.count()

    r = cli(*args)
    assert r.code == 0, r.err
    digest = r.json["digest"]
    art = store.get(digest)
    keys = [json.loads(x)["key"] for x in wf.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 20 and keys[: len(before)] == before  # nothing asked twice, nothing lost
    records = [rec for s in dataset_splits(art) for rec in read_dataset(art, s)]
    assert len(records) == 20 and len({r.meta["teacher"]["key"] for r in records}) == 20
    asked_again = teacher_server.script.count() - calls
    assert asked_again <= 20 - len(before) + 2  # the missing ones (plus at most the 2 in flight at the kill)
