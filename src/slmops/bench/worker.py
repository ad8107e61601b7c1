"""Measuring in a fresh process, the one way slmops does it: :func:`run_fresh` here, ``python -m slmops.bench.worker`` there.

A measurement of speed or memory taken in a process that already loaded other models reports their
memory too; so the benchmark (:func:`slmops.bench.local.bench_isolated`), the optimizer's speed probe
(:func:`slmops.export.measure.measure_in_subprocess`) and the distillation report
(:func:`slmops.distill.report.measure_in_subprocess`) each hand :func:`run_fresh` the name of an
slmops function and its keyword arguments (JSON). The child imports and calls it and prints JSON
lines on stdout: ``{"progress": n, "total": m}`` as work finishes (when asked, through an
``on_progress`` callback), then ``{"result": {...}}``, or ``{"error": {"what", "why", "fix"}}`` for
an slmops error (exit code 1). The parent relays progress to its progress bar, kills a child that
outlives ``timeout_s``, and turns a crash into an :class:`~slmops.errors.SlmopsError` quoting the
child's last line of stderr.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from typing import Any

from slmops import progress
from slmops.errors import SlmopsError


def run_fresh(fn: str, kwargs: Mapping[str, Any], *, label: str, total: int | None = None, timeout_s: float = 3600,
              env: Mapping[str, str] | None = None,
              fix: str = "run it in this process (--no-isolate / isolate: false) to see the full traceback") -> dict[str, Any]:
    """Call ``fn`` (``"slmops.module:function"``) with ``kwargs`` in a fresh Python process and return its result.

    With ``total``, the function is given ``on_progress(done, total)`` and ``label``'s progress bar follows it.
    """
    job = json.dumps({"fn": fn, "kwargs": dict(kwargs), "progress": total is not None})
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    with tempfile.TemporaryFile("w+") as errfile:
        proc = subprocess.Popen([sys.executable, "-m", "slmops.bench.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=errfile, text=True, env=child_env)
        assert proc.stdin and proc.stdout
        watchdog = threading.Timer(timeout_s, proc.kill)  # bounded in time even if the child hangs silently
        watchdog.start()
        try:
            proc.stdin.write(job)
            proc.stdin.close()
            with progress.task(label, total=total) as bar:
                for line in proc.stdout:
                    msg = json.loads(line) if line.startswith("{") else {}
                    if "progress" in msg:
                        bar.set(msg["progress"])
                    elif "result" in msg:
                        result = msg["result"]
                    elif "error" in msg:
                        error = msg["error"]
            proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        errfile.seek(0)
        stderr = errfile.read()
    if error:
        raise SlmopsError(error.get("what") or f"{label} failed", why=error.get("why"), fix=error.get("fix"))
    if result is None:
        last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {proc.returncode}"
        raise SlmopsError(f"{label}: the measuring process died", why=last[:300] if proc.returncode != -9 else f"killed after {timeout_s:.0f} s",
                          fix=fix)
    return result


def _report(done: int, total: int) -> None:
    sys.stdout.write(json.dumps({"progress": done, "total": total}) + "\n")
    sys.stdout.flush()


def main() -> int:
    """The child: read the job from stdin, call the function, print its result (or its slmops error) as a JSON line."""
    job = json.loads(sys.stdin.read())
    module, _, name = str(job["fn"]).partition(":")
    if not module.startswith("slmops.") or not name:
        sys.stderr.write(f"not an slmops function: {job['fn']!r}\n")
        return 2
    kwargs = dict(job.get("kwargs") or {})
    if job.get("progress"):
        kwargs["on_progress"] = _report
    try:
        result = getattr(importlib.import_module(module), name)(**kwargs)
    except SlmopsError as exc:
        sys.stdout.write(json.dumps({"error": exc.to_dict()}) + "\n")
        return 1
    sys.stdout.write(json.dumps({"result": result}, default=str) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
