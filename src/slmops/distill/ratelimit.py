"""Pacing requests to a teacher endpoint: a token-bucket requests-per-minute limiter.

:class:`RateLimiter` is a thread-safe token bucket (``rpm`` tokens per minute, a burst of at most
one second's worth) that every worker takes a token from before each request; a 429 with
``Retry-After`` pauses *all* workers until then (:meth:`RateLimiter.pause_until`). Retry delays
(backoff with jitter, ``Retry-After``) belong to the shared client (:mod:`slmops.client.retry`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    """A token bucket: ``acquire()`` blocks until a request may start. ``rpm=None`` means no limit."""

    def __init__(
        self, rpm: float | None, *, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.rpm = rpm
        self.rate = (rpm / 60.0) if rpm else None  # tokens per second
        self.capacity = max(1.0, self.rate) if self.rate else 1.0
        self._tokens = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._paused_until = 0.0
        self._lock = threading.Lock()
        self.waited_s = 0.0

    def pause_until(self, when: float) -> None:
        """Hold every worker until monotonic time ``when`` (a server's Retry-After)."""
        with self._lock:
            self._paused_until = max(self._paused_until, when)

    def acquire(self, *, deadline: float | None = None) -> None:
        """Take one token, sleeping as needed (at most until ``deadline``, then return anyway)."""
        while True:
            with self._lock:
                now = self._clock()
                wait = self._paused_until - now
                if wait <= 0:
                    if self.rate is None:
                        return
                    self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
                    self._last = now
                    if self._tokens >= 1.0:
                        self._tokens -= 1.0
                        return
                    wait = (1.0 - self._tokens) / self.rate
            if deadline is not None and self._clock() + wait > deadline:
                return
            self.waited_s += wait
            self._sleep(min(wait, 1.0))
