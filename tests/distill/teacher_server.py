"""A scripted OpenAI-compatible teacher for the tests: a real FastAPI app served by uvicorn on 127.0.0.1.

Each request takes the next behaviour from the prompt's own queue (``script.per_prompt[user text]``),
else from the global queue (``script.queue``), else ``"ok"``:

``ok``          a chat completion (text from ``script.answer(body)``), with usage and, when asked, logprobs
``429:S``       HTTP 429 with ``Retry-After: S``          ``500`` / ``503``  a server error
``slow:S``      wait S seconds, then answer                ``drop``     close the socket without a response
``garbage``     HTTP 200 with a body that is not JSON       ``401`` / ``404`` / ``400``  client errors
``length``      an answer with ``finish_reason: "length"``
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse


def _user_text(body: dict[str, Any]) -> str:
    return next((m["content"] for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")


def default_answer(body: dict[str, Any]) -> str:
    return f"answer to: {_user_text(body)}"


def default_logprobs(text: str, k: int) -> dict[str, Any]:
    tokens = [t if i == 0 else " " + t for i, t in enumerate(text.split(" "))]
    return {
        "content": [
            {
                "token": t,
                "logprob": -0.1,
                "bytes": list(t.encode()),
                "top_logprobs": [{"token": t, "logprob": -0.1, "bytes": list(t.encode())}]
                + [{"token": f"alt{j}", "logprob": -3.0 - j, "bytes": list(f"alt{j}".encode())} for j in range(k - 1)],
            }
            for t in tokens
        ]
    }


@dataclass
class Script:
    queue: deque[str] = field(default_factory=deque)
    per_prompt: dict[str, deque[str]] = field(default_factory=dict)
    answer: Callable[[dict[str, Any]], str] = default_answer
    logprobs: Callable[[str, int], dict[str, Any]] = default_logprobs
    log: list[dict[str, Any]] = field(default_factory=list)  # every request: time, prompt, behaviour, auth header
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next(self, body: dict[str, Any], headers: dict[str, str]) -> str:
        prompt = _user_text(body)
        with self.lock:
            q = self.per_prompt.get(prompt)
            b = q.popleft() if q else (self.queue.popleft() if self.queue else "ok")
            self.log.append(
                {
                    "t": time.monotonic(),
                    "prompt": prompt,
                    "behaviour": b,
                    "authorization": headers.get("authorization"),
                    "api-key": headers.get("api-key"),
                    "body": body,
                }
            )
            return b

    def count(self, behaviour: str | None = None) -> int:
        with self.lock:
            return sum(1 for e in self.log if behaviour is None or e["behaviour"] == behaviour)


def make_app(script: Script) -> Any:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        b = script.next(body, dict(request.headers))
        name, _, arg = b.partition(":")
        if name == "429":
            return JSONResponse({"error": {"message": "rate limited"}}, status_code=429, headers={"retry-after": arg or "1"})
        if name in ("500", "503", "401", "404", "400"):
            return JSONResponse({"error": {"message": f"scripted {name}"}}, status_code=int(name))
        if name == "garbage":
            return PlainTextResponse("this is not json", status_code=200)
        if name == "drop":
            request.scope["teacher.transport"].abort()  # close the socket: no status line, no body
            await asyncio.sleep(0.05)
            return PlainTextResponse("")
        if name == "slow":
            await asyncio.sleep(float(arg or 1))
        text = script.answer(body)
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "length" if name == "length" else "stop",
        }
        if body.get("logprobs"):
            choice["logprobs"] = script.logprobs(text, int(body.get("top_logprobs") or 1))
        words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        return {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model"),
            "choices": [choice],
            "usage": {"prompt_tokens": words, "completion_tokens": len(text.split()), "total_tokens": words + len(text.split())},
        }

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            # uvicorn hands the app its request cycle's bound ``send``; its transport is the client's socket
            scope["teacher.transport"] = getattr(getattr(send, "__self__", None), "transport", None)
        await app(scope, receive, send)

    return asgi


class TeacherServer:
    """Serve :func:`make_app` on 127.0.0.1 (a free port) in a background thread."""

    def __init__(self, script: Script | None = None) -> None:
        self.script = script or Script()
        config = uvicorn.Config(
            make_app(self.script),
            host="127.0.0.1",
            port=0,
            log_level="critical",
            lifespan="off",
            timeout_graceful_shutdown=1,
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> TeacherServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test teacher server did not start")
            time.sleep(0.01)
        return self

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
