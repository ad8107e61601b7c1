"""One request's life: resolve the model, hold it, bound the prompt, queue, render and tokenize, generate, then count and log.

The routes turn HTTP into a :class:`Job` (``start``) and a job's token events back into OpenAI
responses; everything between — the pool, the scheduler, the context checks, cancellation when the
client goes away, the deadline, metrics and the request log — is here, shared by chat and
completions. :meth:`Service.finish` runs exactly once per started job, whatever happened.

Cheap checks come first and costly work only after admission: a prompt that cannot fit is refused
by its length in characters (:data:`MAX_CHARS_PER_TOKEN`), then the request takes its place in the
model's queue (or a 503), and only then is its chat template rendered (in a worker process under
``--render-timeout`` and the request's deadline) and its prompt tokenized, on threads of the
server's own — so one model's costly prompts never hold up another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from slmops.errors import DataError, SlmopsError
from slmops.monitor.requestlog import RequestLog
from slmops.runtimes.base import GenerationParams, TokenEvent
from slmops.serve.config import ServeConfig
from slmops.serve.metrics import Metrics
from slmops.serve.pool import Entry, ModelPool
from slmops.serve.protocol import APIError, bad_request
from slmops.serve.resolve import Catalog, Target
from slmops.serve.scheduler import DeadlineExceeded, QueueFull

log = logging.getLogger(__name__)

#: No token of any tokenizer we know spans more characters than this (SmolLM2's longest, a newline and
#: 80 spaces, is 81), so a prompt of more than ``MAX_CHARS_PER_TOKEN × context`` characters cannot fit
#: and is refused without tokenizing it (and a chat template may render no more than that).
MAX_CHARS_PER_TOKEN = 256
#: Address space of a process rendering a chat template for a request (the prompt is capped far below this).
RENDER_MEMORY_MB = 512


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
        # rendering and tokenizing get threads of their own, one per slot that can be taken at once,
        # so slow prompts of one model never wait for (or hold up) the threads everything else uses
        self._prep = ThreadPoolExecutor(max_workers=config.max_loaded * config.parallel + 2, thread_name_prefix="slmops-prep")
        from slmops.data.render_worker import RenderPool

        # a render runs on a held slot: keep a worker for each, or every burst of more than two starts processes again
        self._renderers = RenderPool(keep_idle=config.max_loaded * config.parallel)

    def warm(self) -> None:
        """Start a chat-template worker before the first request needs one (``slmops serve`` does, at startup)."""
        self._renderers.warm(RENDER_MEMORY_MB)

    def stop_rendering(self) -> None:
        """Kill the chat-template workers, rendering or not (the server is stopping: their requests get 503)."""
        self._renderers.close()

    def close(self) -> None:
        """Stop the prompt threads and the chat-template workers (the server is stopping)."""
        self.stop_rendering()
        self._prep.shutdown(wait=False, cancel_futures=True)

    def refresh_gauges(self) -> None:
        """Update the scrape-time gauges: the pool's, and the judge's running quality per served model/version."""
        self.metrics.observe_pool(self.pool)
        if self.requestlog is None:
            return
        from slmops.monitor.requestlog import quality_by_digest
        from slmops.monitor.sample import served_ids

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

    async def encode_prompt(self, job: Job, render: Callable[[Any], str]) -> list[int]:
        """Render (chat template) and tokenize in a prompt thread, under the render budget and the request's deadline.

        A template that rejects the messages or a prompt that cannot be encoded is the client's
        problem (400); a rendered prompt too long for the context is 400 ``context_length_exceeded``;
        a template that is broken or over its time or memory budget is the model's fault (500
        ``chat_template_error``), or 504 when the request's own deadline was what ran out.
        """
        from slmops.data.render_worker import RendererStopped, TemplateBudgetExceeded, render_budget
        from slmops.data.templates import ChatTemplateError

        loop = asyncio.get_running_loop()
        left = job.deadline - loop.time()
        timeout = min(self.config.render_timeout_s, left)
        max_chars = self.max_prompt_chars(job)

        def run() -> list[int]:
            try:
                with render_budget(timeout_s=timeout, max_chars=max_chars, memory_mb=RENDER_MEMORY_MB, pool=self._renderers):
                    text = render(job.runtime)
            except TemplateBudgetExceeded as exc:
                if exc.limit == "size":
                    raise self._too_long(job, f"the rendered prompt is longer than {max_chars:,} characters", "messages") from exc
                if exc.limit == "time" and timeout < self.config.render_timeout_s:
                    raise self._timeout("took") from exc
                raise APIError(500, f"{job.target.requested!r} cannot answer: {exc.message}", type="server_error",
                               code="chat_template_error") from exc
            except RendererStopped as exc:
                raise APIError(503, "the server is shutting down", type="server_error", code="shutting_down") from exc
            except ChatTemplateError as exc:
                raise APIError(500, f"the chat template of {job.target.requested!r} is broken: {exc.message}", type="server_error",
                               code="chat_template_error") from exc
            except (DataError, SlmopsError) as exc:
                raise bad_request(exc.message, code="invalid_prompt") from exc
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:  # lone surrogates (e.g. "\ud800" in the JSON) are not text
                raise bad_request(f"the prompt is not valid Unicode text: {exc.reason} at position {exc.start}",
                                  code="invalid_prompt") from exc
            if len(text) > max_chars:
                raise self._too_long(job, f"the prompt holds {len(text):,} characters", "prompt")
            try:
                return job.runtime.encode_prompt(text)
            except SlmopsError as exc:
                raise bad_request(exc.message, code="invalid_prompt") from exc

        return await loop.run_in_executor(self._prep, run)

    def max_prompt_chars(self, job: Job) -> int:
        """The most characters a prompt for ``job``'s model can hold before it is surely too long (see :data:`MAX_CHARS_PER_TOKEN`)."""
        return MAX_CHARS_PER_TOKEN * int(job.runtime.context_length)

    def check_chars(self, job: Job, n_chars: int, *, param: str) -> None:
        """400 ``context_length_exceeded`` without tokenizing when ``n_chars`` cannot fit the context."""
        if n_chars > self.max_prompt_chars(job):
            raise self._too_long(job, f"the {param} hold {n_chars:,} characters", param)

    def _too_long(self, job: Job, what: str, param: str) -> APIError:
        ctx = int(job.runtime.context_length)
        return bad_request(
            f"This model's maximum context length is {ctx} tokens, and {what}: more than {ctx} tokens of at most "
            f"{MAX_CHARS_PER_TOKEN} characters each can hold. Please reduce the length of the {param}.",
            param=param,
            code="context_length_exceeded",
        )

    def _timeout(self, verb: str) -> APIError:
        return APIError(504, f"the request {verb} longer than the timeout of {self.config.timeout_s:g}s", type="timeout_error", code="timeout")

    def check_context(self, job: Job, n_prompt: int, max_tokens: int | None, *, param: str) -> int:
        """The max_tokens to use; 400 naming both numbers when prompt + max_tokens exceed the context."""
        ctx = job.entry.engine.context_length  # a batch slot's share
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
        """Take a slot of the job's model, queueing for one (503 when ``admit`` and the queue is full, 504 past the deadline).

        Admission is decided and taken in one step (:meth:`Scheduler.enter`), so a burst cannot overfill the queue.
        """
        sched = job.entry.scheduler
        t_wait = time.perf_counter()
        try:
            ticket = sched.enter(bounded=admit)
        except QueueFull as exc:
            raise APIError(
                503,
                f"the queue of {job.target.requested!r} is full ({sched.max_queue} waiting, {sched.slots} running); "
                f"retry in {exc.retry_after}s",
                type="server_error",
                code="queue_full",
                headers={"Retry-After": str(exc.retry_after)},
            ) from None
        if ticket is not None:
            waiting = asyncio.ensure_future(sched.wait(ticket, job.deadline))
            gone = asyncio.ensure_future(job.gone.wait())
            try:
                await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
            if not waiting.done():
                waiting.cancel()
                with contextlib.suppress(BaseException):
                    await waiting
                raise ClientGone()
            try:
                waiting.result()
            except DeadlineExceeded:
                raise self._timeout("waited") from None
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
        finished = False
        try:
            async for ev in sched.run(lambda: job.entry.engine.stream(ids, params, adapter), cancel=job.cancel, deadline=job.deadline):
                if job.ttft_s is None:
                    job.ttft_s = time.perf_counter() - job.t0
                job.completion_tokens += 1
                finished = ev.finish_reason is not None
                yield ev
        except DeadlineExceeded:
            raise self._timeout("took") from None
        except SlmopsError as exc:
            raise bad_request(exc.message, code="generation_failed") from exc
        if job.gone.is_set():
            raise ClientGone()
        if job.cancel.is_set() and not finished:  # stopped from the server's side (a forced unload): never a silent, truncated success
            raise APIError(503, f"{job.target.requested!r} was unloaded while this request ran; retry", type="server_error",
                           code="model_unloaded", headers={"Retry-After": "1"})

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
        model = self.catalog.label(model, job.target if job is not None else None)  # served ids only, in metrics and the log
        kind = None
        if isinstance(error, APIError):
            error.counted = True
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
