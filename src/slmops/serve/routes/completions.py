"""``POST /v1/completions``: raw prompts (text or token ids, one or several), streamed (SSE) or not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from slmops.runtimes.base import GenerationParams, TokenEvent
from slmops.serve.protocol import CompletionRequest, bad_request, completion_logprobs, new_id
from slmops.serve.routes.chat import sampling
from slmops.serve.routes.common import ChunkFn, JobStream, answer, settle, stream_job
from slmops.serve.service import ClientGone, Job, Service

router = APIRouter(tags=["openai"])
ROUTE = "completions"


def prompts_of(body: CompletionRequest) -> list[str | list[int]]:
    p = body.prompt
    if isinstance(p, str):
        return [p]
    if not p:
        raise bad_request("prompt is empty", param="prompt")
    if all(isinstance(x, int) for x in p):
        return [list(p)]  # type: ignore[arg-type]
    out: list[str | list[int]] = list(p)  # type: ignore[arg-type]
    if any(isinstance(x, list) and not x for x in out):
        raise bad_request("a token-id prompt is empty", param="prompt")
    if len(out) * body.n > 16:
        raise bad_request("at most 16 choices per request (prompts × n)", param="prompt")
    return out


def validate(body: CompletionRequest) -> None:
    if body.suffix:
        raise bad_request("suffix (insertion) is not supported by this server", param="suffix", code="unsupported_parameter")
    if body.logit_bias:
        raise bad_request("logit_bias is not supported by this server", param="logit_bias", code="unsupported_parameter")
    if body.best_of is not None and body.best_of != body.n:
        raise bad_request("best_of must equal n here (no server-side ranking)", param="best_of", code="unsupported_parameter")
    if body.echo and body.logprobs is not None:
        raise bad_request("echo with logprobs (prompt logprobs) is not supported", param="echo", code="unsupported_parameter")
    if isinstance(body.stop, list) and len(body.stop) > 16:
        raise bad_request("at most 16 stop sequences", param="stop")


async def prepare(svc: Service, body: CompletionRequest, request: Request) -> tuple[Job, list[list[int]], list[str], list[GenerationParams]]:
    job: Job | None = None
    try:
        validate(body)
        prompts = prompts_of(body)
        job = await svc.start(ROUTE, body.model, request, stream=body.stream, user=body.user)
        job.content = body.prompt
        if body.logprobs is not None and not job.runtime.capabilities.logprobs:
            raise bad_request(f"the {job.runtime.name} runtime does not report logprobs", param="logprobs")
        for p in prompts:
            if isinstance(p, str):
                svc.check_chars(job, len(p), param="prompt")  # before any tokenizing
            elif len(p) > job.runtime.context_length:
                svc.check_context(job, len(p), body.max_tokens, param="prompt")
        await svc.acquire(job)  # admitted (or refused) before any costly work
        all_ids: list[list[int]] = []
        for p in prompts:
            ids = list(p) if isinstance(p, list) else await svc.encode_prompt(job, lambda rt, p=p: p)
            if not ids:
                raise bad_request("the prompt encodes to no tokens", param="prompt")
            if any(t < 0 or t >= job.runtime.vocab_size for t in ids):
                raise bad_request(f"token ids must be in [0, {job.runtime.vocab_size})", param="prompt")
            all_ids.append(ids)
        longest = max(len(ids) for ids in all_ids)
        job.prompt_tokens = sum(len(ids) for ids in all_ids)
        max_tokens = svc.check_context(job, longest, body.max_tokens, param="prompt")
        texts = [p if isinstance(p, str) else job.runtime.detokenize(p) for p in prompts] if body.echo else ["" for _ in prompts]
        params = sampling(svc, body, max_tokens=max_tokens, logprobs=body.logprobs is not None, top_logprobs=body.logprobs or 0, n=body.n)
    except BaseException as exc:
        settle(svc, job, exc, route=ROUTE, model=body.model)
        raise
    return job, all_ids, texts, params


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> Response:
    svc: Service = request.app.state.service
    try:
        job, all_ids, echoes, params = await prepare(svc, body, request)
    except ClientGone:
        return Response(status_code=499)
    job.request_id = new_id("cmpl")
    if body.stream:
        return JobStream(svc, job, _stream(svc, job, body, all_ids, echoes, params), route=ROUTE, model=body.model)

    async def generate() -> list[dict[str, Any]]:
        choices = []
        for pi, ids in enumerate(all_ids):
            for i, p in enumerate(params):
                events: list[TokenEvent] = [ev async for ev in svc.generate(job, ids, p)]
                text = "".join(ev.text for ev in events)
                job.texts.append(text)
                lp = completion_logprobs(svc.logprob_entries(job, events)) if body.logprobs is not None else None
                finish = (events[-1].finish_reason if events else None) or "length"
                choices.append({"index": pi * len(params) + i, "text": echoes[pi] + text, "logprobs": lp, "finish_reason": finish})
        return choices

    return await answer(svc, job, route=ROUTE, model=body.model, obj="text_completion", choices=generate)


def _stream(
    svc: Service, job: Job, body: CompletionRequest, all_ids: list[list[int]], echoes: list[str], params: list[GenerationParams]
) -> AsyncIterator[str]:
    async def choices(chunk: ChunkFn) -> AsyncIterator[str]:
        def choice(i: int, text: str, *, logprobs: Any = None, finish: str | None = None) -> str:
            return chunk({"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish})

        for pi, ids in enumerate(all_ids):
            for i, p in enumerate(params):
                index = pi * len(params) + i
                if echoes[pi]:
                    yield choice(index, echoes[pi])
                parts, finish, offset = [], None, len(echoes[pi])
                async for ev in svc.generate(job, ids, p):
                    parts.append(ev.text)
                    lp = completion_logprobs(svc.logprob_entries(job, [ev]), offset) if body.logprobs is not None else None
                    offset += len(ev.text)
                    if ev.text or lp is not None:
                        yield choice(index, ev.text, logprobs=lp)
                    finish = ev.finish_reason or finish
                job.texts.append("".join(parts))
                yield choice(index, "", finish=finish or "length")

    return stream_job(svc, job, route=ROUTE, model=body.model, obj="text_completion",
                      include_usage=bool(body.stream_options and body.stream_options.include_usage), choices=choices)
