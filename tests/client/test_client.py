"""The shared OpenAI-compatible client against a real scripted server: retries, Retry-After, auth, errors, streams."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from slmops.client import (
    AsyncOpenAIClient,
    ClientError,
    Failure,
    OpenAIClient,
    Retry,
    ServerUnreachable,
    backoff_delay,
    chat_body,
    delta_text,
    normalize_base_url,
    parse_retry_after,
)

FAST = Retry(max_retries=3, base_s=0.01, max_s=0.05)


class Script:
    """What the server does next: ``ok``, ``429:S`` (Retry-After S), ``500``, ``401``, ``garbage``, ``stream``, ``stream-error``."""

    def __init__(self) -> None:
        self.queue: deque[str] = deque()
        self.seen: list[dict[str, Any]] = []
        self.times: list[float] = []


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Script]]:
    from slmops.serve.background import running_server

    script = Script()
    app = FastAPI()

    def chunk(text: str) -> str:
        return "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}) + "\n\n"

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "m1"}, {"id": "m2"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        script.seen.append({"body": body, "authorization": request.headers.get("authorization"), "api-key": request.headers.get("api-key")})
        script.times.append(time.monotonic())
        what = script.queue.popleft() if script.queue else "ok"
        if what.startswith("429:"):
            return JSONResponse({"error": {"message": "slow down", "type": "rate_limit"}}, status_code=429,
                                headers={"retry-after": what[4:]})
        if what in ("500", "401", "400"):
            return JSONResponse({"error": {"message": f"scripted {what}", "type": "x"}}, status_code=int(what))
        if what == "garbage":
            return PlainTextResponse("<html>not json</html>")
        if body.get("stream"):
            parts = [chunk("Hel"), chunk("lo")]
            if what == "stream-error":
                parts.append("data: " + json.dumps({"error": {"message": "engine died"}}) + "\n\n")
            return StreamingResponse(iter([*parts, "data: [DONE]\n\n"]), media_type="text/event-stream")
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1}}

    with running_server(app) as url:
        yield f"{url}/v1", script


BODY = chat_body("m1", [{"role": "user", "content": "hello \udcff"}], max_tokens=4)  # a lone surrogate travels escaped


def test_retries_server_errors_and_garbage_then_answers_with_the_hooks_seeing_every_failure(server: tuple[str, Script]) -> None:
    url, script = server
    script.queue.extend(["500", "garbage", "ok"])
    failures: list[Failure] = []
    attempts: list[int] = []
    with OpenAIClient(url, api_key="sk-test", retry=FAST, before_attempt=attempts.append, on_failure=failures.append) as client:
        ans = client.chat(BODY)
    assert ans.attempts == 3 and attempts == [0, 1, 2] and ans.body["choices"][0]["message"]["content"] == "hi"
    assert [f.error for f in failures] == ["HTTP 500", "malformed response (not a chat completion)"]
    assert failures[0].detail == "scripted 500" and failures[0].status == 500
    assert script.seen[-1]["authorization"] == "Bearer sk-test"


def test_429_waits_for_retry_after(server: tuple[str, Script]) -> None:
    url, script = server
    script.queue.extend(["429:0.4", "ok"])
    with OpenAIClient(url, retry=FAST) as client:
        ans = client.chat(BODY)
    assert ans.attempts == 2 and script.times[-1] - script.times[-2] >= 0.35


def test_client_errors_fail_at_once_with_the_openai_message_and_a_fix(server: tuple[str, Script]) -> None:
    url, script = server
    script.queue.append("401")
    n = len(script.seen)
    with OpenAIClient(url, api_key="bad", api_key_header="api-key", retry=FAST) as client, pytest.raises(ClientError) as info:
        client.chat(BODY)
    err = info.value
    assert len(script.seen) == n + 1 and script.seen[-1]["api-key"] == "bad" and script.seen[-1]["authorization"] is None
    assert err.status == 401 and not err.retryable and err.why == "scripted 401" and "401" in err.message and "--api-key-env" in (err.fix or "")


def test_gives_up_after_max_retries(server: tuple[str, Script]) -> None:
    url, script = server
    script.queue.extend(["500"] * 4)
    with OpenAIClient(url, retry=Retry(max_retries=2, base_s=0.01)) as client, pytest.raises(ClientError) as info:
        client.chat(BODY)
    assert info.value.attempts == 3 and info.value.retryable and "gave up after 3 attempts" in info.value.message
    script.queue.clear()


def test_stop_cancels_a_waiting_retry(server: tuple[str, Script]) -> None:
    url, script = server
    script.queue.extend(["429:30", "ok"])
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    with OpenAIClient(url, retry=FAST, stop=stop) as client, pytest.raises(ClientError) as info:
        client.chat(BODY)
    assert info.value.cancelled and time.monotonic() - t0 < 5
    script.queue.clear()


def test_models_and_streams(server: tuple[str, Script]) -> None:
    url, script = server
    with OpenAIClient(url, retry=FAST) as client:
        assert client.models() == ["m1", "m2"]
        script.queue.append("500")  # before the first byte: retried
        assert "".join(delta_text(c) for c in client.stream(BODY)) == "Hello"
        script.queue.append("stream-error")
        with pytest.raises(ClientError, match="engine died"):
            list(client.stream(BODY))


def test_async_stream_yields_chunks_as_they_come(server: tuple[str, Script]) -> None:
    import asyncio

    url, script = server

    async def run() -> tuple[str, str]:
        async with AsyncOpenAIClient(url) as client:
            text = "".join([delta_text(c) async for c in client.stream(BODY)])
            script.queue.append("500")
            try:
                [c async for c in client.stream(BODY)]
            except ClientError as exc:
                return text, exc.error
        return text, ""

    text, error = asyncio.run(run())
    assert text == "Hello" and error == "HTTP 500: scripted 500"


def test_unreachable_server_is_offline() -> None:
    from slmops.errors import OfflineError
    from slmops.serve.background import free_port

    with OpenAIClient(f"http://127.0.0.1:{free_port()}/v1", retry=Retry(max_retries=1, base_s=0.01), timeout_s=2) as client, \
            pytest.raises(ServerUnreachable) as info:
        client.models()
    assert isinstance(info.value, OfflineError) and info.value.attempts == 2 and "cannot reach" in info.value.message


def test_backoff_retry_after_and_urls() -> None:
    import random

    rng = random.Random(0)
    delays = [backoff_delay(a, base=1.0, cap=4.0, rng=rng) for a in range(6)]
    assert all(0 <= d <= min(4.0, 2**a) for a, d in enumerate(delays))
    assert parse_retry_after("3") == 3.0 and parse_retry_after("junk") is None and parse_retry_after("99999") == 300.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=lambda: 1445412480.0 - 10) == pytest.approx(10.0)
    assert Retry().delay(0, 2.5) == 2.5
    assert normalize_base_url("http://h:1/v1/chat/completions") == "http://h:1/v1"
    with pytest.raises(Exception, match="credentials"):
        normalize_base_url("http://u:p@h/v1")


def test_the_key_can_come_from_an_environment_variable(server: tuple[str, Script], monkeypatch: pytest.MonkeyPatch) -> None:
    from slmops.errors import ConfigError

    url, script = server
    monkeypatch.setenv("JUDGE_KEY", "sk-env")
    with OpenAIClient(url, api_key_env="JUDGE_KEY", retry=FAST) as client:
        client.chat(BODY)
    assert script.seen[-1]["authorization"] == "Bearer sk-env"
    monkeypatch.delenv("JUDGE_KEY")
    with pytest.raises(ConfigError, match="JUDGE_KEY"):
        OpenAIClient(url, api_key_env="JUDGE_KEY")
