"""The one OpenAI-compatible HTTP client: auth, connect/read timeouts, retries with backoff, streaming.

:class:`OpenAIClient` (sync, thread-safe: one ``httpx.Client`` shared by worker threads) sends
JSON to ``{base_url}{path}`` with the key in a header (``Authorization: Bearer`` or Azure's
``api-key``; given, or read from the environment variable ``api_key_env``, never logged). An attempt that fails with a status in :data:`~slmops.client.retry.RETRY_STATUS`
(429, 5xx …), a timeout, a dropped or refused connection, or a 200 whose body ``parse`` rejects is
retried after the server's ``Retry-After`` or else exponential backoff with full jitter, up to
``retry.max_retries`` times; other statuses fail at once. Every failure ends in a
:class:`~slmops.client.errors.ClientError` carrying the OpenAI error message, the status and a fix.
Callers that keep statistics or pace requests pass ``before_attempt`` / ``on_failure`` hooks, and a
``stop`` event cancels waiting retries. A stream is retried only until its first byte arrives.

:class:`AsyncOpenAIClient` is the asyncio twin for load generators: the same headers and
timeouts, streamed requests only, and no retries (a load test counts failures, it does not hide
them). Request bodies travel as ASCII JSON, so any text, even a lone surrogate, can be sent.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Self

from slmops._optional import require
from slmops.client.errors import ClientError, ServerUnreachable, auth_headers, chunk_error, error_detail, fix_for
from slmops.client.retry import RETRY_STATUS, Retry, parse_retry_after
from slmops.client.sse import aiter_chunks, iter_chunks
from slmops.settings import api_key_from_env

MALFORMED = "malformed response (not a chat completion)"


@dataclass(frozen=True)
class Failure:
    """One failed attempt, as the ``on_failure`` hook sees it."""

    error: str  # "HTTP 503", "timeout", "connection error (ConnectError)", MALFORMED
    status: int | None
    attempt: int  # 0-based
    retry_after: float | None = None
    detail: str = ""

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status in RETRY_STATUS or self.error == MALFORMED


@dataclass
class Answer:
    """A successful JSON answer: ``value`` is what ``parse`` made of ``body``; ``latency_s`` of the last attempt."""

    body: Any
    value: Any
    attempts: int
    latency_s: float


def encode_body(body: dict[str, Any]) -> bytes:
    """The request body as ASCII JSON: any text (even a lone surrogate, which has no UTF-8 form) travels as a \\u escape."""
    return json.dumps(body, ensure_ascii=True).encode("ascii")


def chat_body(model: str, messages: Sequence[dict[str, Any]], *, max_tokens: int, temperature: float = 0.0, stop: Sequence[str] = (),
              seed: int | None = None, stream: bool = False, ignore_eos: bool = False, **extra: Any) -> dict[str, Any]:
    """A chat-completions request body; ``ignore_eos`` is vLLM's (and slmops serve's) extension, sent only when asked for;
    ``extra`` fields that are None are left out."""
    body: dict[str, Any] = {"model": model, "messages": list(messages), "max_tokens": max_tokens, "temperature": temperature}
    if ignore_eos:
        body["ignore_eos"] = True
    if stop:
        body["stop"] = list(stop)
    if seed is not None:
        body["seed"] = seed
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return {**body, **{k: v for k, v in extra.items() if v is not None}}


def is_chat_completion(body: Any) -> Any:
    """``body`` when it is a chat completion (a first choice with a message), else None."""
    try:
        choice = body["choices"][0]
        content = choice["message"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    return body if content is None or isinstance(content, str) else None


def _settings(httpx: Any, timeout_s: float, connect_timeout_s: float | None, max_connections: int | None) -> dict[str, Any]:
    kw: dict[str, Any] = {"timeout": httpx.Timeout(timeout_s, connect=min(timeout_s, connect_timeout_s or 10.0))}
    if max_connections:
        kw["limits"] = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return kw


class OpenAIClient:
    """A client of one OpenAI-compatible server at ``base_url`` (used as given: normalise it first where users type it)."""

    def __init__(self, base_url: str, *, api_key: str | None = None, api_key_env: str | None = None, api_key_header: str = "authorization",
                 timeout_s: float = 120.0, connect_timeout_s: float | None = 10.0, retry: Retry | None = None, max_connections: int | None = None,
                 stop: threading.Event | None = None, before_attempt: Callable[[int], None] | None = None,
                 on_failure: Callable[[Failure], None] | None = None, purpose: str = "talking to an OpenAI-compatible server") -> None:
        self._httpx = httpx = require("httpx", extra="serve", purpose=purpose)
        self.base_url = base_url.rstrip("/")
        self.retry = retry or Retry()
        self.stop = stop or threading.Event()
        self.before_attempt = before_attempt
        self.on_failure = on_failure
        self._rng = random.Random()
        self._headers = {"content-type": "application/json", **auth_headers(api_key or api_key_from_env(api_key_env), api_key_header)}
        self._client = httpx.Client(headers=self._headers, **_settings(httpx, timeout_s, connect_timeout_s, max_connections))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plain JSON

    def models(self) -> list[str]:
        """The model ids the server lists at ``/models``."""
        ans = self.request("GET", "/models", parse=lambda b: b if isinstance(b, dict) else None)
        return [str(m.get("id")) for m in ans.body.get("data", []) if isinstance(m, dict)]

    def chat(self, body: dict[str, Any], *, parse: Callable[[Any], Any] | None = None) -> Answer:
        """POST ``/chat/completions`` (not streamed); ``parse`` (default: is it a chat completion?) None means malformed."""
        return self.request("POST", "/chat/completions", body, parse=parse or is_chat_completion)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                parse: Callable[[Any], Any] | None = None) -> Answer:
        """One JSON request with retries; ``parse`` turns the 200 body into the answer's value (None: malformed, retried)."""
        last: Failure | None = None
        for attempt in range(self.retry.max_retries + 1):
            self._wait_before(attempt, last)
            t0 = time.perf_counter()
            resp = self._send(method, path, body, attempt)
            if not isinstance(resp, Failure):
                data = _json(resp)
                value = parse(data) if parse is not None and data is not None else data
                if value is not None:
                    return Answer(data, value, attempt + 1, round(time.perf_counter() - t0, 4))
                resp = Failure(MALFORMED, resp.status_code, attempt, detail=resp.text[:200])
            last = self._failed(resp, method, path)
        assert last is not None
        raise self._error(last, method, path)

    # ------------------------------------------------------------------ streams

    def stream(self, body: dict[str, Any], path: str = "/chat/completions") -> Iterator[dict[str, Any]]:
        """The chunk dicts of one streamed request (``stream: true`` is set); retried until its first byte arrives."""
        body = {**body, "stream": True}
        last: Failure | None = None
        for attempt in range(self.retry.max_retries + 1):
            self._wait_before(attempt, last)
            try:
                with self._client.stream("POST", self.base_url + path, content=encode_body(body)) as resp:
                    if resp.status_code != 200:
                        last = self._failed(_status_failure(resp, attempt, resp.read()), "POST", path)
                        continue
                    yield from self._chunks(resp)
                    return
            except self._httpx.TransportError as exc:
                last = self._failed(self._transport_failure(exc, attempt), "POST", path)
        assert last is not None
        raise self._error(last, "POST", path)

    def _chunks(self, resp: Any) -> Iterator[dict[str, Any]]:
        try:
            for chunk in iter_chunks(resp.iter_lines()):
                if (msg := chunk_error(chunk)) is not None:
                    raise ClientError(f"{self.base_url} failed mid-stream", status=200, why=msg, fix="see the server's log")
                yield chunk
        except self._httpx.HTTPError as exc:
            raise ClientError(f"streaming from {self.base_url} failed", error=type(exc).__name__,
                              why=str(exc) or type(exc).__name__) from exc

    # ------------------------------------------------------------------ one attempt

    def _wait_before(self, attempt: int, last: Failure | None) -> None:
        if attempt:
            assert last is not None
            if self.stop.wait(self.retry.delay(attempt - 1, last.retry_after, self._rng)):
                raise self._cancelled(last)
        if self.stop.is_set():
            raise self._cancelled(last)
        if self.before_attempt is not None:
            self.before_attempt(attempt)

    def _send(self, method: str, path: str, body: dict[str, Any] | None, attempt: int) -> Any:
        try:
            resp = self._client.request(method, self.base_url + path, content=encode_body(body) if body is not None else None)
        except self._httpx.TransportError as exc:
            return self._transport_failure(exc, attempt)
        return resp if resp.status_code == 200 else _status_failure(resp, attempt, resp.content)

    def _transport_failure(self, exc: Exception, attempt: int) -> Failure:
        error = "timeout" if isinstance(exc, self._httpx.TimeoutException) else f"connection error ({type(exc).__name__})"
        return Failure(error, None, attempt, detail=str(exc) or type(exc).__name__)

    def _failed(self, failure: Failure, method: str, path: str) -> Failure:
        """Report a failed attempt to the hook; raise at once when it is not worth another."""
        if self.on_failure is not None:
            self.on_failure(failure)
        if not failure.retryable:
            raise self._error(failure, method, path)
        return failure

    def _cancelled(self, last: Failure | None) -> ClientError:
        return ClientError("cancelled", status=last.status if last else None, error="cancelled",
                           attempts=last.attempt + 1 if last else 0, cancelled=True)

    def _error(self, f: Failure, method: str, path: str) -> ClientError:
        common: dict[str, Any] = {"status": f.status, "error": f.error, "attempts": f.attempt + 1, "retryable": f.retryable,
                                  "detail": f.detail}
        tries = f" (gave up after {f.attempt + 1} attempts)" if f.attempt else ""
        if f.status is None and f.error != "timeout":
            return ServerUnreachable(f"cannot reach {self.base_url}{tries}", why=f.detail,
                                     fix="check the URL and that the server is running (slmops serve, ollama serve, llama-server …)",
                                     **common)
        if f.status is None:
            return ClientError(f"{method} {self.base_url}{path} timed out{tries}", why=f.detail,
                               fix="raise the timeout or check the server's load", **common)
        if f.error == MALFORMED:
            return ClientError(f"the answer of {self.base_url}{path} is not an OpenAI response{tries}", why=f.detail,
                               fix="check that the URL points at an OpenAI-compatible API", **common)
        return ClientError(f"{self.base_url}{path} answered {f.status}{tries}", why=f.detail, fix=fix_for(f.status, self.base_url),
                           **common)


class AsyncOpenAIClient:
    """The asyncio client for load generators: streamed requests, same headers and timeouts, no retries."""

    def __init__(self, base_url: str, *, api_key: str | None = None, api_key_env: str | None = None, api_key_header: str = "authorization",
                 timeout_s: float = 120.0, connect_timeout_s: float | None = 10.0, max_connections: int | None = None) -> None:
        self._httpx = httpx = require("httpx", extra="serve", purpose="load-testing a server over HTTP")
        self.base_url = base_url.rstrip("/")
        headers = {"content-type": "application/json", **auth_headers(api_key or api_key_from_env(api_key_env), api_key_header)}
        self._client = httpx.AsyncClient(headers=headers, **_settings(httpx, timeout_s, connect_timeout_s, max_connections))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def stream(self, body: dict[str, Any], path: str = "/chat/completions") -> AsyncIterator[dict[str, Any]]:
        """The chunk dicts of one streamed request, as they arrive; any failure is a :class:`ClientError`."""
        body = {**body, "stream": True}
        try:
            async with self._client.stream("POST", self.base_url + path, content=encode_body(body)) as resp:
                if resp.status_code != 200:
                    detail = error_detail(await resp.aread())
                    raise ClientError(f"{self.base_url}{path} answered {resp.status_code}", status=resp.status_code,
                                      error=f"HTTP {resp.status_code}: {detail}", why=detail)
                async for chunk in aiter_chunks(resp.aiter_lines()):
                    yield chunk
        except self._httpx.HTTPError as exc:
            raise ClientError(f"streaming from {self.base_url} failed", error=f"{type(exc).__name__}: {exc}",
                              why=str(exc) or type(exc).__name__) from exc


def _json(resp: Any) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def _status_failure(resp: Any, attempt: int, content: bytes) -> Failure:
    return Failure(f"HTTP {resp.status_code}", resp.status_code, attempt, parse_retry_after(resp.headers.get("retry-after")),
                   error_detail(content))
