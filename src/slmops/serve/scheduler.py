"""Per-model admission and execution: a bounded queue in front of ``slots`` generation threads.

Runtimes are blocking, so each admitted request generates in a worker thread, and its tokens cross
into the event loop through an :class:`asyncio.Queue`. The :class:`Scheduler` of a loaded model
lets ``slots`` requests run at once (the batch width where the runtime batches, else 1) and at most
``max_queue`` wait; one more is refused at once with :class:`QueueFull` (→ 503 + Retry-After), so no
request ever waits unboundedly. Admission (:meth:`Scheduler.enter`) decides and takes a slot or a
queue place in one step, with no ``await`` in between, so a burst cannot overfill the queue.
Waiting and running both count against the request's deadline.

Cancellation is cooperative: the consumer sets a :class:`threading.Event` when the client goes away
or the deadline passes, the worker checks it between tokens, closes the runtime's generator (which
frees the runtime) and only then gives the slot back — so a freed slot is really free.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from slmops.runtimes.base import TokenEvent


class QueueFull(Exception):
    """The model's queue is full; ``retry_after`` is a hint in whole seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"queue full, retry after {retry_after}s")
        self.retry_after = retry_after


class DeadlineExceeded(Exception):
    """The request ran past its deadline (waiting or generating)."""

    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where


_END = object()
_TIMEOUT = object()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Scheduler:
    """A bounded queue and ``slots`` concurrent generations for one loaded model (event-loop side)."""

    def __init__(self, slots: int, max_queue: int, *, name: str = "") -> None:
        self.slots = max(1, slots)
        self.max_queue = max(0, max_queue)
        self.name = name
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._durations: deque[float] = deque(maxlen=32)
        self.threads: set[threading.Thread] = set()

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    def retry_after(self) -> int:
        """Seconds until a place is likely free: the mean recent duration times the queue ahead, per slot."""
        mean = sum(self._durations) / len(self._durations) if self._durations else 1.0
        return max(1, math.ceil(mean * (self.waiting + 1) / self.slots))

    def enter(self, *, bounded: bool = True) -> asyncio.Future[None] | None:
        """Admit a request atomically: take a free slot (None) or a place in the queue (a future that a
        :meth:`release` resolves); :class:`QueueFull` when ``bounded`` and there is neither.

        Deciding and taking happen in one step on the event loop (no ``await`` between them), so a
        burst of requests can never overfill the queue.
        """
        if self.running < self.slots and not self.waiting:
            self.running += 1
            return None
        if bounded and self.waiting >= self.max_queue:
            raise QueueFull(self.retry_after())
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        return fut

    async def wait(self, ticket: asyncio.Future[None] | None, deadline: float) -> None:
        """Wait until the queued ``ticket`` (from :meth:`enter`) holds a slot, or ``deadline`` (a ``loop.time()``) passes."""
        if ticket is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(asyncio.shield(ticket), max(0.0, deadline - loop.time()))
        except (TimeoutError, asyncio.CancelledError) as exc:
            if ticket.done() and not ticket.cancelled():
                self.release()  # the slot was handed to us just as we gave up: pass it on
            else:
                ticket.cancel()
            if isinstance(exc, TimeoutError):
                raise DeadlineExceeded("waiting in the queue") from None
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(ticket)

    async def acquire(self, deadline: float, *, admit: bool = True) -> None:
        """Take a slot, waiting in the queue until ``deadline``; ``admit`` enforces the queue bound."""
        await self.wait(self.enter(bounded=admit), deadline)

    def release(self) -> None:
        """Give a slot back: to the next waiter if there is one, else free it."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.running = max(0, self.running - 1)

    async def run(
        self,
        make_events: Callable[[], Iterator[TokenEvent]],
        *,
        cancel: threading.Event,
        deadline: float,
    ) -> AsyncIterator[TokenEvent]:
        """Run ``make_events()`` in a worker thread on an acquired slot; yield its events here.

        The slot is released by the worker once the generator is closed. Leaving the iteration
        early (client gone, error, deadline) sets ``cancel`` (so one ``cancel`` can serve several runs in turn); :class:`DeadlineExceeded` is raised
        when ``deadline`` passes between two events.
        """
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[Any] = asyncio.Queue()
        started = time.perf_counter()

        def post(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone (shutdown)
                loop.call_soon_threadsafe(q.put_nowait, item)

        def done() -> None:
            self._durations.append(time.perf_counter() - started)
            self.release()

        def work() -> None:
            events: Iterator[TokenEvent] | None = None
            try:
                events = make_events()
                for ev in events:
                    if cancel.is_set():
                        break
                    post(ev)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which decides what it means
                post(_Failed(exc))
            finally:
                close = getattr(events, "close", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        close()
                post(_END)
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(done)
                self.threads.discard(threading.current_thread())

        thread = threading.Thread(target=work, name=f"slmops-gen-{self.name}", daemon=True)
        self.threads.add(thread)
        try:
            thread.start()
        except BaseException:
            self.threads.discard(thread)
            self.release()
            raise
        ended = False
        timer = loop.call_at(deadline, q.put_nowait, _TIMEOUT)  # cheaper than a wait_for per token
        try:
            while True:
                item = await q.get()
                if item is _TIMEOUT:
                    raise DeadlineExceeded("generating")
                if item is _END:
                    ended = True
                    return
                if isinstance(item, _Failed):
                    ended = True
                    raise item.exc
                yield item
        finally:
            timer.cancel()
            if not ended:
                cancel.set()  # left early: stop the worker at its next token
