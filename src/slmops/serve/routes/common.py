"""What the generation routes share: SSE framing, a streaming response that always settles its job, error settling."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from slmops.serve.protocol import APIError, now, usage
from slmops.serve.service import ClientGone, Job, Service

log = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


DONE = "data: [DONE]\n\n"


def fingerprint(job: Job) -> str:
    """``system_fingerprint``: which artifact answered (a canary's versions differ)."""
    return f"slmops-{job.target.digest[:12]}"


def completed(svc: Service, job: Job, *, route: str, model: str, obj: str, choices: list[dict[str, Any]]) -> JSONResponse:
    """Finish ``job`` as a success and answer with the whole (non-streamed) completion object."""
    svc.finish(job, 200, route=route, model=model)
    body = {"id": job.request_id, "object": obj, "created": now(), "model": model, "system_fingerprint": fingerprint(job),
            "choices": choices, "usage": usage(job.prompt_tokens, job.completion_tokens)}
    return JSONResponse(body, headers=version_headers(job))


async def answer(svc: Service, job: Job, *, route: str, model: str, obj: str,
                 choices: Callable[[], Awaitable[list[dict[str, Any]]]]) -> Response:
    """The non-streamed answer: ``choices()`` generates them; a client that went away gets 499, any error settles the job."""
    try:
        out = await choices()
    except ClientGone as exc:
        settle(svc, job, exc, route=route, model=model)
        return Response(status_code=499)
    except BaseException as exc:
        settle(svc, job, exc, route=route, model=model)
        raise
    return completed(svc, job, route=route, model=model, obj=obj, choices=out)


ChunkFn = Callable[[dict[str, Any]], str]


async def stream_job(svc: Service, job: Job, *, route: str, model: str, obj: str, include_usage: bool,
                     choices: Callable[[ChunkFn], AsyncIterator[str]]) -> AsyncIterator[str]:
    """The SSE body of a streamed completion: ``choices(chunk)`` yields the choice chunks; this adds the
    usage chunk, ``[DONE]``, any error as a final event before ``[DONE]`` (a stream is never cut
    silently), and settles the job exactly once (499 when the client went away, 500 on a bug)."""
    base: dict[str, Any] = {"id": job.request_id, "object": obj, "created": now(), "model": model, "system_fingerprint": fingerprint(job)}

    # the frame around a choice is the same for every chunk: serialise it once, and only the choice per token
    head = "data: " + json.dumps(base, ensure_ascii=False, separators=(",", ":"))[:-1] + ',"choices":['
    tail = ("]," + '"usage":null}' if include_usage else "]}") + "\n\n"
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

    def chunk(choice: dict[str, Any]) -> str:
        return head + dumps(choice) + tail

    status, error = 200, None
    try:
        async for line in choices(chunk):
            yield line
        if include_usage:
            yield sse({**base, "choices": [], "usage": usage(job.prompt_tokens, job.completion_tokens)})
        yield DONE
    except APIError as exc:
        status, error = exc.status, exc
        yield sse(exc.body())
        yield DONE
    except ClientGone as exc:
        status, error = 499, exc
    except (asyncio.CancelledError, GeneratorExit):
        status, error = 499, ClientGone()
        raise
    except Exception as exc:  # a bug: the client still learns that the stream failed (never a silent cut)
        log.exception("unexpected error while streaming %s", route)
        status, error = 500, exc
        yield sse(APIError(500, "internal server error", type="server_error", code="internal").body())
        yield DONE
    except BaseException as exc:
        status, error = 500, exc
        raise
    finally:
        job.cancel.set()
        svc.finish(job, status, route=route, model=model, error=error)


def version_headers(job: Job) -> dict[str, str]:
    return {"x-slmops-model-version": job.target.version, "x-slmops-model-digest": job.target.digest[:12]}


def status_of(exc: BaseException) -> int:
    if isinstance(exc, APIError):
        return exc.status
    if isinstance(exc, ClientGone):
        return 499
    return 500


class JobStream(StreamingResponse):
    """A streaming response that settles its job even when the stream never starts (client gone early)."""

    def __init__(self, svc: Service, job: Job, body: AsyncIterator[str], *, route: str, model: str) -> None:
        super().__init__(body, media_type="text/event-stream", headers={**SSE_HEADERS, **version_headers(job)})
        self._svc, self._job, self._route, self._model = svc, job, route, model

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self._job.finished:
                self._svc.finish(self._job, 499, route=self._route, model=self._model, error=ClientGone())


def settle(svc: Service, job: Job | None, exc: BaseException, *, route: str, model: str) -> None:
    """Count and log a request that failed before (or instead of) its answer."""
    svc.finish(job, status_of(exc), route=route, model=model, error=exc)
