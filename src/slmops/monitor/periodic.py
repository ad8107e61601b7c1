"""The server's periodic per-model checks (drift, judge): every period, each served model in turn.

:func:`every_served_model` runs ``check(model_id)`` in a worker thread for each id and hands the
result to ``publish`` (gauges, the app's state). A :class:`~slmops.errors.DataError` (too little
traffic, no request log yet) is logged at info and skipped; any other failure is logged with its
traceback and retried next period — the server keeps serving either way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from slmops.errors import DataError

log = logging.getLogger(__name__)


async def every_served_model(ids: Callable[[], list[str]], every_s: float, check: Callable[[str], Any],
                             publish: Callable[[str, Any], None], *, what: str) -> None:
    """Forever: ``publish(id, check(id))`` for each of ``ids()``, then sleep ``every_s`` seconds."""
    while True:
        for model_id in ids():
            try:
                result = await asyncio.to_thread(check, model_id)
            except DataError as exc:
                log.info("%s for %s skipped: %s", what, model_id, exc.message)
                continue
            except Exception:
                log.exception("%s for %s failed", what, model_id)
                continue
            publish(model_id, result)
        await asyncio.sleep(every_s)
