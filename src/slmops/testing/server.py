"""Servers for tests and notebooks: one in a background thread (:mod:`slmops.serve.background`, re-exported
here), and :func:`wait_until_healthy` for an ``slmops serve`` started as a process of its own."""

from __future__ import annotations

import subprocess
import time

import httpx

from slmops.serve.background import free_port, running_server

__all__ = ["free_port", "running_server", "wait_until_healthy"]


def wait_until_healthy(proc: subprocess.Popen, port: int, *, timeout_s: float, poll_s: float = 0.3) -> None:
    """Wait until the server ``proc`` answers ``/health`` with 200 on 127.0.0.1:``port``.

    Raises AssertionError with what the process printed when it exits first, or when ``timeout_s`` passes.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the server exited with {proc.returncode} before it answered /health: {err or out or ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() >= deadline:
            raise AssertionError(f"the server did not answer /health within {timeout_s:.0f} s")
        time.sleep(poll_s)
