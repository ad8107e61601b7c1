"""Pacing requests to a teacher endpoint: a token-bucket requests-per-minute limiter and retry delays.

* :class:`RateLimiter` — a thread-safe token bucket (``rpm`` tokens per minute, a burst of at most
  one second's worth) that every worker takes a token from before each request; a 429 with
  ``Retry-After`` pauses *all* workers until then (:meth:`RateLimiter.pause_until`).
* :func:`backoff_delay` — exponential backoff with full jitter (AWS's "full jitter": a uniform
  draw between 0 and ``min(cap, base * 2**attempt)``), never below ``floor``.
* :func:`parse_retry_after` — the ``Retry-After`` header in seconds (delta-seconds or HTTP date).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime

#: Longest wait a Retry-After header can impose (a server asking for more is treated as this).
MAX_RETRY_AFTER_S = 300.0


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


def backoff_delay(attempt: int, *, base: float, cap: float, floor: float = 0.0, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based): full jitter, at least ``floor``."""
    r = rng or random
    ceiling = min(cap, base * (2.0**attempt))
    return max(floor, r.uniform(0.0, ceiling))


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """``Retry-After`` in seconds (``"3"`` or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - now()
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))
