"""``POST /v1/chat/completions``: messages through the model's chat template, streamed (SSE) or not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from slmops.runtimes.base import GenerationParams, TokenEvent
from slmops.serve.protocol import ChatCompletionRequest, bad_request, chat_logprobs, new_id
from slmops.serve.routes.common import ChunkFn, JobStream, answer, settle, stream_job
from slmops.serve.service import ClientGone, Job, Service

router = APIRouter(tags=["openai"])
ROUTE = "chat"


def validate(body: ChatCompletionRequest) -> None:
    """Refuse what cannot be honoured, with the parameter named (before any model is loaded)."""
    if body.tools:
        raise bad_request("tools (function calling) are not supported by this server", param="tools", code="unsupported_parameter")
    if body.logit_bias:
        raise bad_request("logit_bias is not supported by this server", param="logit_bias", code="unsupported_parameter")
    if body.top_logprobs and not body.logprobs:
        raise bad_request("top_logprobs needs logprobs: true", param="top_logprobs")
    if isinstance(body.stop, list) and len(body.stop) > 16:
        raise bad_request("at most 16 stop sequences", param="stop")
    rf = body.response_format
    if rf is not None and rf.type == "json_schema":
        raise bad_request(
            "response_format json_schema is not supported (no constrained decoding here); use json_object",
            param="response_format",
            code="unsupported_parameter",
        )
    if rf is not None and rf.type == "json_object" and not any("json" in m.text().lower() for m in body.messages):
        raise bad_request("'messages' must contain the word 'json' in some form to use response_format json_object", param="response_format")


def sampling(svc: Service, body: Any, *, max_tokens: int, logprobs: bool, top_logprobs: int, n: int) -> list[GenerationParams]:
    """One :class:`GenerationParams` per choice (seeds ``seed + i``)."""
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    out = []
    for i in range(n):
        out.append(
            svc.params(
                max_tokens=max_tokens,
                temperature=1.0 if body.temperature is None else body.temperature,
                top_p=None if body.top_p is None else max(body.top_p, 1e-9),
                top_k=body.top_k,
                seed=None if body.seed is None else (body.seed + i) % 2**64,
                stop=stop,
                presence_penalty=body.presence_penalty,
                frequency_penalty=body.frequency_penalty,
                repetition_penalty=body.repetition_penalty,
                ignore_eos=body.ignore_eos,
                logprobs=logprobs,
                top_logprobs=top_logprobs,
            )
        )
    return out


async def prepare(svc: Service, body: ChatCompletionRequest, request: Request) -> tuple[Job, list[int], list[GenerationParams]]:
    job: Job | None = None
    try:
        validate(body)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
        job = await svc.start(ROUTE, body.model, request, stream=body.stream, user=body.user)
        job.content = messages
        if body.logprobs and not job.runtime.capabilities.logprobs:
            raise bad_request(f"the {job.runtime.name} runtime does not report logprobs", param="logprobs")
        svc.check_chars(job, sum(len(m["content"]) for m in messages), param="messages")  # before any tokenizing
        await svc.acquire(job)  # admitted (or refused) before any costly work: rendering runs on the request's slot
        ids = await svc.encode_prompt(job, lambda rt: rt.apply_chat_template(messages, add_generation_prompt=True))
        job.prompt_tokens = len(ids)
        max_tokens = svc.check_context(job, len(ids), body.max_completion_tokens or body.max_tokens, param="messages")
        params = sampling(svc, body, max_tokens=max_tokens, logprobs=body.logprobs, top_logprobs=body.top_logprobs or 0, n=body.n)
    except BaseException as exc:
        settle(svc, job, exc, route=ROUTE, model=body.model)
        raise
    return job, ids, params


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    svc: Service = request.app.state.service
    try:
        job, ids, params = await prepare(svc, body, request)
    except ClientGone:
        return Response(status_code=499)
    job.request_id = new_id("chatcmpl")
    if body.stream:
        return JobStream(svc, job, _stream(svc, job, body, ids, params), route=ROUTE, model=body.model)

    async def generate() -> list[dict[str, Any]]:
        choices = []
        for i, p in enumerate(params):
            events: list[TokenEvent] = [ev async for ev in svc.generate(job, ids, p)]
            text = "".join(ev.text for ev in events)
            job.texts.append(text)
            choices.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": chat_logprobs(svc.logprob_entries(job, events)) if body.logprobs else None,
                    "finish_reason": (events[-1].finish_reason if events else None) or "length",
                }
            )
        return choices

    return await answer(svc, job, route=ROUTE, model=body.model, obj="chat.completion", choices=generate)


def _stream(svc: Service, job: Job, body: ChatCompletionRequest, ids: list[int], params: list[GenerationParams]) -> AsyncIterator[str]:
    async def choices(chunk: ChunkFn) -> AsyncIterator[str]:
        def choice(i: int, delta: dict[str, Any], *, logprobs: Any = None, finish: str | None = None) -> str:
            return chunk({"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish})

        for i, p in enumerate(params):
            yield choice(i, {"role": "assistant", "content": ""})
            parts, finish = [], None
            async for ev in svc.generate(job, ids, p):
                parts.append(ev.text)
                lp = chat_logprobs(svc.logprob_entries(job, [ev])) if body.logprobs else None
                if ev.text or lp is not None:
                    yield choice(i, {"content": ev.text}, logprobs=lp)
                finish = ev.finish_reason or finish
            job.texts.append("".join(parts))
            yield choice(i, {}, finish=finish or "length")

    return stream_job(svc, job, route=ROUTE, model=body.model, obj="chat.completion.chunk",
                      include_usage=bool(body.stream_options and body.stream_options.include_usage), choices=choices)
