"""An OpenAI-compatible endpoint as the teacher: concurrency, RPM limit, retries, cache, usage and cost.

Requests go to ``{base_url}/chat/completions`` from a pool of ``concurrency`` threads sharing one
:class:`slmops.client.OpenAIClient`, whose retry loop this teacher drives through its hooks: before
each attempt a worker takes a token from the :class:`RateLimiter`, and every failed attempt is
counted by kind. Retried with exponential backoff and full jitter, up to ``max_retries`` times:
HTTP 429 and 5xx (a ``Retry-After`` header is honoured — and on 429 pauses every worker), timeouts,
dropped or refused connections, and bodies that are not a chat completion. 401/403 (the key) and 404 (the
model or URL) stop the whole run with :class:`TeacherFatal`; other 4xx fail that request only.

A response is cached (:class:`~slmops.distill.cache.ResponseCache`) under a key of the request
body plus endpoint and sample index, so asking again costs nothing. The API key lives only in the
client's headers: it is never hashed into a key, logged, or written anywhere.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from slmops.client import ClientError, Failure, OpenAIClient, Retry
from slmops.distill.cache import ResponseCache, request_key
from slmops.distill.ratelimit import RateLimiter
from slmops.distill.teachers import (
    OnResult,
    Result,
    Sampling,
    TeacherFailure,
    TeacherFatal,
    TeacherReply,
    TeacherRequest,
    compact_logprobs,
)

log = logging.getLogger(__name__)

FATAL_STATUS = {
    401: "the endpoint refused the API key",
    403: "the endpoint refused the API key",
    404: "the endpoint has no such model or route",
}


class HttpTeacher:
    """A chat-completions endpoint (OpenAI, Azure OpenAI, vLLM, llama.cpp server, slmops serve …)."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        sampling: Sampling,
        api_key: str | None = None,
        api_key_header: str = "authorization",
        concurrency: int = 4,
        rpm: float | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 30.0,
        cache: ResponseCache | None = None,
        price_prompt_per_1m: float | None = None,
        price_completion_per_1m: float | None = None,
        seed: int | None = 0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.sampling = sampling
        self.concurrency = concurrency
        self.cache = cache or ResponseCache(_nowhere(), enabled=False)
        self.prices = (price_prompt_per_1m, price_completion_per_1m)
        self.seed = seed
        self.limiter = RateLimiter(rpm)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.client = OpenAIClient(
            self.base_url, api_key=api_key, api_key_header=api_key_header, timeout_s=timeout_s,
            retry=Retry(max_retries=max_retries, base_s=backoff_base_s, max_s=backoff_max_s), max_connections=concurrency,
            stop=self._stop, before_attempt=self._before_attempt, on_failure=self._on_failure, purpose="an HTTP teacher",
        )
        self._counts: Counter[str] = Counter()
        self._latency: list[float] = []

    # ------------------------------------------------------------------ public

    def describe(self) -> dict[str, Any]:
        return {"type": "http", "base_url": self.base_url, "model": self.model}

    def stats(self) -> dict[str, Any]:
        c = self._counts
        out: dict[str, Any] = {
            "requests": c["requests"],
            "http_calls": c["http_calls"],
            "retries": c["retries"],
            "cache_hits": c["cache_hits"],
            "failed": c["failed"],
            "prompt_tokens": c["prompt_tokens"],
            "completion_tokens": c["completion_tokens"],
            "billed_prompt_tokens": c["billed_prompt_tokens"],
            "billed_completion_tokens": c["billed_completion_tokens"],
            "errors": {k.removeprefix("error:"): v for k, v in sorted(c.items()) if k.startswith("error:")},
            "rate_limit_wait_s": round(self.limiter.waited_s, 3),
            "mean_latency_s": round(sum(self._latency) / len(self._latency), 4) if self._latency else None,
        }
        pp, pc = self.prices
        if pp is not None or pc is not None:
            out["cost_usd"] = round(c["billed_prompt_tokens"] * (pp or 0) / 1e6 + c["billed_completion_tokens"] * (pc or 0) / 1e6, 6)
        return out

    def close(self) -> None:
        self._stop.set()
        self.client.close()

    def run(self, requests: Sequence[TeacherRequest], on_result: OnResult) -> None:
        """Answer every request; ``on_result`` runs in this thread as each finishes."""
        if not requests:
            return
        todo = iter(requests)
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="slmops-teacher") as pool:
            running: dict[Future[Result], TeacherRequest] = {}
            try:
                # keep at most 2x concurrency in flight, so a kill loses little and memory stays flat
                while True:
                    while len(running) < 2 * self.concurrency and (req := next(todo, None)) is not None:
                        running[pool.submit(self.request, req)] = req
                    if not running:
                        break
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for fut in done:
                        req = running.pop(fut)
                        on_result(req, fut.result())
            except BaseException:
                self._stop.set()
                for fut in running:
                    fut.cancel()
                raise

    # ------------------------------------------------------------------ one request

    def body(self, req: TeacherRequest) -> dict[str, Any]:
        s = self.sampling
        body: dict[str, Any] = {
            "model": self.model,
            "messages": req.messages,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
        }
        if req.seed is not None:
            body["seed"] = req.seed
        if s.top_logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = s.top_logprobs
        return body

    def request(self, req: TeacherRequest) -> Result:
        body = self.body(req)
        key = request_key({"base_url": self.base_url, "body": body, "sample": req.sample})
        self._count("requests")
        if (hit := self.cache.get(key)) is not None and (reply := _parse(hit)) is not None:
            reply.cached = True
            self._count("cache_hits")
            self._count("prompt_tokens", reply.prompt_tokens)
            self._count("completion_tokens", reply.completion_tokens)
            return reply
        try:
            ans = self.client.chat(body, parse=_parse)
        except ClientError as exc:
            return self._failure(req, exc)
        reply = ans.value
        reply.attempts = ans.attempts
        reply.latency_s = ans.latency_s
        self._record(reply)
        self.cache.put(key, ans.body)
        return reply

    def _before_attempt(self, attempt: int) -> None:
        if attempt:
            self._count("retries")
        self.limiter.acquire()
        self._count("http_calls")

    def _on_failure(self, f: Failure) -> None:
        self._count(f"error:{f.error}")
        if f.status == 429 and f.retry_after:
            self.limiter.pause_until(time.monotonic() + f.retry_after)  # every worker waits, not just this one
        if f.retryable and f.attempt < self.client.retry.max_retries:
            log.info("teacher request: %s; retry %d", f.error, f.attempt + 1)

    def _failure(self, req: TeacherRequest, exc: ClientError) -> TeacherFailure:
        if exc.cancelled:
            return TeacherFailure("cancelled", exc.attempts, exc.status)
        if exc.status in FATAL_STATUS:
            self._stop.set()
            raise TeacherFatal(
                f"{FATAL_STATUS[exc.status]} (HTTP {exc.status})",
                why=exc.detail,
                fix="check the key in the environment variable named by api_key_env (--api-key-env): it must hold a valid key"
                if exc.status in (401, 403)
                else f"check --base-url and --model (GET {self.base_url}/models lists the endpoint's models)",
            ) from exc
        self._count("failed")
        log.info("teacher request %s failed: %s", req.key, exc.message)
        if exc.retryable:
            return TeacherFailure(f"{exc.error} (gave up after {exc.attempts} attempts)", exc.attempts, exc.status)
        return TeacherFailure(f"{exc.error}: {exc.detail}", exc.attempts, exc.status)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def _record(self, reply: TeacherReply) -> None:
        with self._lock:
            self._latency.append(reply.latency_s)
            for k in ("prompt_tokens", "billed_prompt_tokens"):
                self._counts[k] += reply.prompt_tokens
            for k in ("completion_tokens", "billed_completion_tokens"):
                self._counts[k] += reply.completion_tokens


def _nowhere() -> Any:
    from pathlib import Path

    return Path("/nonexistent-slmops-cache")


def _parse(data: Any) -> TeacherReply | None:
    """A :class:`TeacherReply` from a chat-completion body; None when it is not one."""
    try:
        choice = data["choices"][0]
        msg = choice.get("message") or {}
        text = msg.get("content")
        if text is None:
            text = ""
        if not isinstance(text, str):
            return None
        usage = data.get("usage") or {}
        return TeacherReply(
            text=text,
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            logprobs=_logprobs(choice.get("logprobs")),
        )
    except (KeyError, IndexError, TypeError, AttributeError, ValueError):
        return None


def _token_id(token: str) -> int | None:
    # vLLM with --return-tokens-as-token-ids writes tokens as "token_id:123"
    if token.startswith("token_id:") and token[9:].isdigit():
        return int(token[9:])
    return None


def _logprobs(lp: Any) -> dict[str, Any] | None:
    """Compact top-k logprobs from an OpenAI ``logprobs`` object (``content`` list); None if absent."""
    content = lp.get("content") if isinstance(lp, dict) else None
    if not content:
        return None
    tokens = [str(c["token"]) for c in content]
    tops = [c.get("top_logprobs") or [] for c in content]
    top_tokens = [[str(t["token"]) for t in row] for row in tops]
    ids = [_token_id(t) for t in tokens]
    top_ids = [[_token_id(t) for t in row] for row in top_tokens]
    with_ids = all(i is not None for i in ids) and all(i is not None for row in top_ids for i in row)
    return compact_logprobs(
        tokens,
        [float(c["logprob"]) for c in content],
        top_tokens,
        [[float(t["logprob"]) for t in row] for row in tops],
        ids=ids if with_ids else None,
        top_ids=top_ids if with_ids else None,  # type: ignore[arg-type]
    )
