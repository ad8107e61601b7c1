"""One request's life: resolve the model, hold it, check the prompt, queue, generate, then count and log.

The routes turn HTTP into a :class:`Job` (``start``) and a job's token events back into OpenAI
responses; everything between — the pool, the scheduler, the context check, cancellation when the
client goes away, the deadline, metrics and the request log — is here, shared by chat and
completions. :meth:`Service.finish` runs exactly once per started job, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from slmops.errors import SlmopsError
from slmops.runtimes.base import GenerationParams, TokenEvent
from slmops.serve.config import ServeConfig
from slmops.serve.engines import encode
from slmops.serve.metrics import Metrics
from slmops.serve.pool import Entry, ModelPool
from slmops.serve.protocol import APIError, bad_request
from slmops.serve.requestlog import RequestLog
from slmops.serve.resolve import Catalog, Target
from slmops.serve.scheduler import DeadlineExceeded, QueueFull

log = logging.getLogger(__name__)


class ClientGone(Exception):
    """The client disconnected; nobody is listening for the answer."""


@dataclass(eq=False)
class Job:
    """One request from start to finish: its model, its prompts, its timings and its outcome."""

    route: str
    target: Target
    entry: Entry
    request: Any
    stream: bool = False
    user: str | None = None
    prompts: list[list[int]] = field(default_factory=list)
    content: Any = None  # what the client sent, for --log-content
    cancel: threading.Event = field(default_factory=threading.Event)
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    t0: float = field(default_factory=time.perf_counter)
    deadline: float = 0.0
    queue_s: float = 0.0
    ttft_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    texts: list[str] = field(default_factory=list)
    finished: bool = False
    slot_held: bool = False
    request_id: str | None = None
    _watcher: asyncio.Task[None] | None = None

    @property
    def runtime(self) -> Any:
        return self.entry.runtime


class Service:
    """The server's state (catalog, pool, metrics, request log) and the request lifecycle over it."""

    def __init__(self, config: ServeConfig, catalog: Catalog, pool: ModelPool, metrics: Metrics, requestlog: RequestLog | None) -> None:
        self.config = config
        self.catalog = catalog
        self.pool = pool
        self.metrics = metrics
        self.requestlog = requestlog

    def refresh_gauges(self) -> None:
        """Update the scrape-time gauges: the pool's, and the judge's running quality per served model/version."""
        self.metrics.observe_pool(self.pool)
        if self.requestlog is None:
            return
        from slmops.monitor.sample import quality_by_digest, served_ids

        scores = quality_by_digest(self.requestlog.path)
        if not scores:
            return
        served = []
        for model_id in served_ids(self.config):
            try:
                t = self.catalog.resolve(model_id)
            except APIError:
                continue
            served.append((model_id, t.version, t.digest))
        self.metrics.observe_quality(scores, served)

    # ------------------------------------------------------------------ start

    async def start(self, route: str, model_id: str, request: Any, *, stream: bool, user: str | None = None) -> Job:
        """Resolve ``model_id`` and hold its loaded model; errors here are counted by the caller."""
        target = self.catalog.resolve(model_id)
        entry = await self.pool.acquire(target)
        loop = asyncio.get_running_loop()
        job = Job(route, target, entry, request, stream=stream, user=user)
        job.deadline = loop.time() + self.config.timeout_s
        entry.cancels.add(job.cancel)
        if request is not None:
            job._watcher = asyncio.ensure_future(self._watch_disconnect(job))
        return job

    async def _watch_disconnect(self, job: Job) -> None:
        receive = getattr(job.request, "receive", None)
        if receive is None:
            return
        with contextlib.suppress(Exception):
            while True:
                msg = await receive()
                if msg.get("type") == "http.disconnect":
                    job.gone.set()
                    job.cancel.set()
                    return

    async def encode_prompt(self, job: Job, render: Any) -> list[int]:
        """Render (chat template) and tokenize in a worker thread; SlmopsError → 400."""
        def run() -> list[int]:
            text = render(job.runtime)
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:  # lone surrogates (e.g. "\ud800" in the JSON) are not text
                raise bad_request(f"the prompt is not valid Unicode text: {exc.reason} at position {exc.start}",
                                  code="invalid_prompt") from exc
            return encode(job.runtime, text)

        try:
            return await asyncio.to_thread(run)
        except SlmopsError as exc:
            raise bad_request(exc.message, code="invalid_prompt") from exc

    def check_context(self, job: Job, n_prompt: int, max_tokens: int | None, *, param: str) -> int:
        """The max_tokens to use; 400 naming both numbers when prompt + max_tokens exceed the context."""
        ctx = int(getattr(job.entry.engine, "context_length", None) or job.runtime.context_length)  # a batch slot's share
        if max_tokens is None:
            max_tokens = self.config.default_max_tokens or max(1, ctx - n_prompt)
            max_tokens = min(max_tokens, max(1, ctx - n_prompt))
            if n_prompt < ctx:
                return max_tokens
        if n_prompt + max_tokens > ctx:
            raise bad_request(
                f"This model's maximum context length is {ctx} tokens. However, you requested {n_prompt + max_tokens} tokens "
                f"({n_prompt} in the {param}, {max_tokens} in the completion). Please reduce the length of the {param} or max_tokens.",
                param=param,
                code="context_length_exceeded",
            )
        return max_tokens

    def params(self, **kw: Any) -> GenerationParams:
        try:
            return GenerationParams(**{k: v for k, v in kw.items() if v is not None})
        except ValidationError as exc:
            first = exc.errors()[0]
            raise bad_request(f"{'.'.join(map(str, first['loc']))}: {first['msg']}", param=str(first["loc"][0])) from exc

    # ------------------------------------------------------------------ generate

    async def acquire(self, job: Job, *, admit: bool = True) -> None:
        """Queue for a slot of the job's model (503 when the queue is full, 504 past the deadline)."""
        sched = job.entry.scheduler
        t_wait = time.perf_counter()
        try:
            if admit:
                sched.check_admission()
        except QueueFull as exc:
            raise APIError(
                503,
                f"the queue of {job.target.requested!r} is full ({sched.max_queue} waiting, {sched.slots} running); "
                f"retry in {exc.retry_after}s",
                type="server_error",
                code="queue_full",
                headers={"Retry-After": str(exc.retry_after)},
            ) from None
        acquire = asyncio.ensure_future(sched.acquire(job.deadline, admit=False))
        gone = asyncio.ensure_future(job.gone.wait())
        try:
            await asyncio.wait({acquire, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not acquire.done():
            acquire.cancel()
            with contextlib.suppress(BaseException):
                await acquire
            raise ClientGone()
        try:
            acquire.result()
        except DeadlineExceeded:
            raise APIError(
                504, f"the request waited longer than the timeout of {self.config.timeout_s:g}s", type="timeout_error", code="timeout"
            ) from None
        job.queue_s += time.perf_counter() - t_wait
        job.slot_held = True
        if job.gone.is_set():
            self._drop_slot(job)
            raise ClientGone()

    def _drop_slot(self, job: Job) -> None:
        if job.slot_held:
            job.slot_held = False
            job.entry.scheduler.release()

    async def generate(self, job: Job, ids: Sequence[int], params: GenerationParams) -> AsyncIterator[TokenEvent]:
        """Stream the tokens of one generation on the job's slot (queueing for one first if it holds none)."""
        if not job.slot_held:
            await self.acquire(job, admit=False)
        job.slot_held = False  # from here the worker thread owns the slot and gives it back
        adapter = job.target.adapter
        sched = job.entry.scheduler
        try:
            async for ev in sched.run(lambda: job.entry.engine.stream(ids, params, adapter), cancel=job.cancel, deadline=job.deadline):
                if job.ttft_s is None:
                    job.ttft_s = time.perf_counter() - job.t0
                job.completion_tokens += 1
                yield ev
        except DeadlineExceeded:
            raise APIError(
                504, f"the request took longer than the timeout of {self.config.timeout_s:g}s", type="timeout_error", code="timeout"
            ) from None
        except SlmopsError as exc:
            raise bad_request(exc.message, code="generation_failed") from exc
        if job.gone.is_set():
            raise ClientGone()

    # ------------------------------------------------------------------ finish

    def finish(self, job: Job | None, status: int, *, route: str, model: str, error: BaseException | None = None) -> None:
        """Count, time and log one request (once), and let go of its model."""
        if job is not None:
            if job.finished:
                return
            job.finished = True
            self._drop_slot(job)
            if job._watcher is not None:
                job._watcher.cancel()
            job.entry.cancels.discard(job.cancel)
            self.pool.release(job.entry)
        version = job.target.version if job is not None else ""
        kind = None
        if error is not None:
            kind = error.kind if isinstance(error, APIError) else "client_disconnected" if isinstance(error, ClientGone) else "internal"
            self.metrics.errors.labels(kind).inc()
        self.metrics.requests.labels(model, version, route, str(status)).inc()
        latency = None
        if job is not None:
            latency = time.perf_counter() - job.t0
            self.metrics.latency.labels(model, version).observe(latency)
            if job.prompt_tokens:
                self.metrics.prompt_tokens.labels(model, version).inc(job.prompt_tokens)
                self.metrics.prompt_len.labels(model).observe(job.prompt_tokens)
            if job.completion_tokens:
                self.metrics.completion_tokens.labels(model, version).inc(job.completion_tokens)
            if job.ttft_s is not None:
                self.metrics.ttft.labels(model, version).observe(job.ttft_s)
                if job.completion_tokens > 1:
                    gen = latency - job.ttft_s
                    self.metrics.tpot.labels(model, version).observe(max(0.0, gen) / (job.completion_tokens - 1))
        if self.requestlog is not None:
            client = getattr(getattr(job.request, "client", None), "host", None) if job is not None else None
            self.requestlog.record(
                {
                    "request_id": getattr(job, "request_id", None),
                    "route": route,
                    "model": model,
                    "version": version or None,
                    "digest": job.target.digest if job is not None else None,
                    "status": status,
                    "error": (error.message if isinstance(error, APIError) else kind) if error is not None else None,
                    "stream": int(job.stream) if job is not None else None,
                    "prompt_tokens": job.prompt_tokens if job is not None else None,
                    "completion_tokens": job.completion_tokens if job is not None else None,
                    "queue_s": job.queue_s if job is not None else None,
                    "ttft_s": job.ttft_s if job is not None else None,
                    "latency_s": latency,
                    "client": client,
                    "user": job.user if job is not None else None,
                    "prompt": job.content if job is not None else None,
                    "completion": ("\n".join(job.texts) if len(job.texts) != 1 else job.texts[0]) if job is not None and job.texts else None,
                }
            )

    def token_text(self, job: Job, token_id: int) -> str:
        return str(job.runtime.detokenize([token_id], skip_special_tokens=False))

    def logprob_entries(self, job: Job, events: list[TokenEvent]) -> list[tuple[str, float, list[tuple[str, float]]]]:
        out = []
        for ev in events:
            tops = [(self.token_text(job, t), lp) for t, lp in (ev.top_logprobs or ())]
            out.append((self.token_text(job, ev.token_id), float(ev.logprob if ev.logprob is not None else 0.0), tops))
        return out
