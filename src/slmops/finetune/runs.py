"""The SIGTERM → checkpoint hand-off of a training run (the run lock is :mod:`slmops.store.locks`).

The runner builds a stage's output in a temp dir that vanishes if the stage fails, so whatever
must survive a crash lives in the stage context's work dir, ``$SLMOPS_HOME/runs/<cache key>/``:
``checkpoints/``, ``best/`` (early stopping) and ``tensorboard/``. The cache key covers stage, stage
version, config and input digests, so the same command finds the same directory after a crash, and
any change to the config or data gets a fresh one. A lock file keeps two processes from training
the same run at once; the OS drops the lock when its holder dies, even by SIGKILL.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from slmops.errors import SlmopsError

log = logging.getLogger(__name__)


class TrainingInterrupted(SlmopsError):
    """Training stopped on SIGTERM/SIGINT after writing a checkpoint (exit status 128 + signal)."""

    exit_code = 143

    def __init__(self, what: str, *, why: str | None = None, fix: str | None = None, signum: int = signal.SIGTERM) -> None:
        super().__init__(what, why=why, fix=fix)
        self.exit_code = 128 + int(signum)


class StopSignal:
    """Turns SIGTERM (and SIGINT) into a flag the training loop polls between steps.

    Installed only in the main thread (signal handlers cannot be set elsewhere); the previous
    handlers come back when the block ends.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signum = signum
        log.warning("received %s: finishing the current step and writing a checkpoint", signal.Signals(signum).name)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @contextmanager
    def installed(self) -> Iterator[StopSignal]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
