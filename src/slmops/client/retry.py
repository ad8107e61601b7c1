"""When and how long to retry a request to an OpenAI-compatible server.

* :data:`RETRY_STATUS` — the HTTP statuses worth another attempt (429, 5xx and their cousins).
* :func:`backoff_delay` — exponential backoff with full jitter (AWS's "full jitter": a uniform
  draw between 0 and ``min(cap, base * 2**attempt)``), never below ``floor``.
* :func:`parse_retry_after` — the ``Retry-After`` header in seconds (delta-seconds or HTTP date).
* :class:`Retry` — the policy one client applies: how many retries, the backoff base and cap.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

#: HTTP statuses retried with backoff (a ``Retry-After`` header is honoured).
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})
#: Longest wait a Retry-After header can impose (a server asking for more is treated as this).
MAX_RETRY_AFTER_S = 300.0


@dataclass(frozen=True)
class Retry:
    """How one client retries: ``max_retries`` more attempts after the first, backoff from ``base_s`` up to ``max_s``."""

    max_retries: int = 2
    base_s: float = 0.5
    max_s: float = 30.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random | None = None) -> float:
        """Seconds before retry number ``attempt`` (0-based): the server's ``Retry-After`` if it sent one, else backoff."""
        return retry_after if retry_after is not None else backoff_delay(attempt, base=self.base_s, cap=self.max_s, rng=rng)


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
