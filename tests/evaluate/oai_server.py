"""A small, real OpenAI-compatible server for the evaluation and benchmark tests (FastAPI + uvicorn on 127.0.0.1).

It answers ``/v1/models``, ``/v1/chat/completions`` (plain and streamed, with usage and
``stream_options.include_usage``) and ``/v1/completions``. The answers come either from a real
runtime (``open_runtime`` on a tiny model, with its chat template) or from a ``script`` function
of the messages, so tests can control what a "model" says (labels for gates, verdicts for a
judge). Bad requests get OpenAI-shaped 400s; a runtime's slmops error is a 400 too; any other
exception is a 500, as a real server would do.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import Request  # at module level: FastAPI resolves the (string) annotations of the routes here

Script = Callable[[list[dict[str, Any]]], str]
ROLES = {"system", "user", "assistant", "tool"}
_END = object()


def _error(status: int, message: str) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "code": None}}, status_code=status)


def make_app(*, runtime: Any = None, script: Script | None = None, model_id: str = "tiny", token_delay: float = 0.0) -> Any:
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    from slmops.errors import SlmopsError
    from slmops.runtimes.base import GenerationParams

    app = FastAPI()
    app.state.requests = 0

    def pieces(messages: list[dict[str, Any]], body: dict[str, Any], *, chat: bool) -> Iterator[tuple[str, int]]:
        """(text, prompt_tokens) per generated token."""
        max_tokens = int(body.get("max_tokens") or 16)
        if script is not None:
            words = script(messages).split(" ")
            for i, w in enumerate(words[:max_tokens]):
                if token_delay:
                    time.sleep(token_delay)
                yield (w if i == 0 else " " + w), sum(len(str(m.get("content", "")).split()) for m in messages)
            return
        prompt = runtime.apply_chat_template(messages, add_generation_prompt=True) if chat else body["prompt"]
        params = GenerationParams(max_tokens=max_tokens, temperature=float(body.get("temperature") or 0.0),
                                  stop=body.get("stop") or [], ignore_eos=bool(body.get("ignore_eos", False)))
        n_prompt = len(runtime.tokenize(prompt))
        events = runtime.stream(prompt, params)  # validates the prompt now: a bad one raises here
        if not body.get("stream"):
            for ev in events:
                yield ev.text, n_prompt
            return
        # a streamed response is consumed from several threadpool threads; the runtime's lock must stay
        # in one thread, so one thread generates and hands tokens over through a queue
        q: queue.Queue[Any] = queue.Queue()

        def produce() -> None:
            try:
                for ev in events:
                    q.put(ev.text)
            finally:
                q.put(_END)

        threading.Thread(target=produce, daemon=True).start()
        while (item := q.get()) is not _END:
            yield item, n_prompt

    def validate(body: dict[str, Any]) -> str | None:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            return "messages must be a non-empty list"
        for m in msgs:
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                return f"invalid role {m.get('role') if isinstance(m, dict) else m!r}"
        return None

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "owned_by": "tests"}]}

    def respond(body: dict[str, Any], messages: list[dict[str, Any]], *, chat: bool) -> Any:
        app.state.requests += 1
        kind = "chat.completion" if chat else "text_completion"
        if body.get("stream"):
            gen = pieces(messages, body, chat=chat)
            try:
                first = next(gen, None)
            except SlmopsError as exc:
                return _error(400, exc.message)

            def sse() -> Iterator[str]:
                n, n_prompt = 0, 0
                items = [first] if first is not None else []
                for text, n_prompt in itertools.chain(items, gen):  # lazily: each token leaves as it is made
                    n += 1
                    choice = {"index": 0, "delta": {"content": text}, "finish_reason": None} if chat else {"index": 0, "text": text}
                    yield "data: " + json.dumps({"id": "x", "object": f"{kind}.chunk", "model": model_id, "choices": [choice]}) + "\n\n"
                end = {"index": 0, "delta": {}, "finish_reason": "stop"} if chat else {"index": 0, "text": "", "finish_reason": "stop"}
                yield "data: " + json.dumps({"id": "x", "object": f"{kind}.chunk", "model": model_id, "choices": [end]}) + "\n\n"
                if (body.get("stream_options") or {}).get("include_usage"):
                    usage = {"prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n}
                    yield "data: " + json.dumps({"id": "x", "object": f"{kind}.chunk", "choices": [], "usage": usage}) + "\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(sse(), media_type="text/event-stream")
        try:
            parts = list(pieces(messages, body, chat=chat))
        except SlmopsError as exc:
            return _error(400, exc.message)
        text = "".join(p for p, _ in parts)
        n_prompt = parts[0][1] if parts else 0
        usage = {"prompt_tokens": n_prompt, "completion_tokens": len(parts), "total_tokens": n_prompt + len(parts)}
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"} if chat
                  else {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None})
        return {"id": "x", "object": kind, "created": int(time.time()), "model": model_id, "choices": [choice], "usage": usage}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not JSON")
        problem = validate(body)
        if problem:
            return _error(400, problem)
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(respond, body, body["messages"], chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await request.json()
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            prompt = prompt[0] if prompt else ""
        if not isinstance(prompt, str):
            return _error(400, "prompt must be a string")
        body["prompt"] = prompt
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(respond, body, [{"role": "user", "content": prompt}], chat=False)

    return app


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run ``app`` on 127.0.0.1 in a background thread; yields ``http://127.0.0.1:PORT/v1``."""
    from slmops.serve.background import running_server

    with running_server(app) as url:
        yield f"{url}/v1"
