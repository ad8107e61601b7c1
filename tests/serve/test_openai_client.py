"""The official ``openai`` client against a real server on 127.0.0.1: chat and completions, streamed and not."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from serve_helpers import CHAT

from slmops.runtimes import GenerationParams, open_runtime
from slmops.store import Store


@pytest.fixture(scope="module")
def server(module_servers: Any) -> Any:
    return module_servers(models=["bot", "bot:1", "bot@prod"], parallel=2)


def local_greedy(home: Any, ref: str, messages: list[dict[str, str]], n: int) -> str:
    with Store(home) as store:
        art = store.lookup(ref.split(":")[0], version=int(ref.split(":")[1]))
    rt = open_runtime(art)
    try:
        return rt.generate(rt.apply_chat_template(messages), GenerationParams(max_tokens=n)).text
    finally:
        rt.close()


def test_models_and_health(server: Any) -> None:
    ids = [m.id for m in server.client().models.list().data]
    assert ids == ["bot", "bot:1", "bot@prod"]
    m = server.client().models.retrieve("bot@prod")
    assert m.id == "bot@prod" and m.object == "model"
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


def test_chat_matches_the_runtime_greedy(server: Any, serve_home: Any) -> None:
    resp = server.client().chat.completions.with_raw_response.create(model="bot@prod", messages=CHAT, max_tokens=12, temperature=0)
    assert resp.headers["x-slmops-model-version"] == "bot:1"
    r = resp.parse()
    assert r.object == "chat.completion" and r.model == "bot@prod"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == local_greedy(serve_home, "bot:1", CHAT, 12)
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 12
    assert r.choices[0].finish_reason in ("stop", "length")


def test_chat_stream_equals_non_stream_and_reports_usage(server: Any) -> None:
    c = server.client()
    whole = c.chat.completions.create(model="bot", messages=CHAT, max_tokens=16, temperature=0)
    chunks = list(c.chat.completions.create(model="bot", messages=CHAT, max_tokens=16, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(ch.usage is None for ch in chunks[:-1])


def test_raw_sse_ends_with_done(server: Any) -> None:
    body = {"model": "bot", "messages": CHAT, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    assert all(ln.startswith("data: ") for ln in lines)
    json.loads(lines[0][6:])


def test_sampling_parameters(server: Any) -> None:
    c = server.client()
    a = c.chat.completions.create(model="bot", messages=CHAT, max_tokens=10, temperature=1.0, top_p=0.9, seed=7, n=2,
                                  presence_penalty=0.5, frequency_penalty=0.5)
    b = c.chat.completions.create(model="bot", messages=CHAT, max_tokens=10, temperature=1.0, top_p=0.9, seed=7, n=2,
                                  presence_penalty=0.5, frequency_penalty=0.5)
    assert [x.message.content for x in a.choices] == [x.message.content for x in b.choices]
    assert [x.index for x in a.choices] == [0, 1]
    assert 2 <= a.usage.completion_tokens <= 20
    # max_completion_tokens wins over the deprecated max_tokens; stop strings never appear
    r = c.chat.completions.create(model="bot", messages=CHAT, max_completion_tokens=3, temperature=0)
    assert r.usage.completion_tokens <= 3
    full = c.chat.completions.create(model="bot", messages=CHAT, max_tokens=20, temperature=0).choices[0].message.content
    word = next((w for w in full.split() if len(w) > 2), None)
    if word:
        cut = c.chat.completions.create(model="bot", messages=CHAT, max_tokens=20, temperature=0, stop=[word])
        assert word not in cut.choices[0].message.content and cut.choices[0].finish_reason == "stop"


def test_chat_logprobs(server: Any) -> None:
    r = server.client().chat.completions.create(model="bot", messages=CHAT, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 3
        assert item.top_logprobs[0].logprob >= item.top_logprobs[-1].logprob
        assert abs(item.top_logprobs[0].logprob - item.logprob) < 1e-6  # greedy: the chosen token is the most likely


def test_completions(server: Any) -> None:
    c = server.client()
    r = c.completions.create(model="bot", prompt=["the quick brown fox", "a teacher"], max_tokens=6, temperature=0, n=2, logprobs=2)
    assert [ch.index for ch in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text  # greedy: both choices agree
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    echo = c.completions.create(model="bot", prompt="the quick brown fox", max_tokens=4, temperature=0, echo=True)
    assert echo.choices[0].text.startswith("the quick brown fox")
    ids = c.completions.create(model="bot", prompt=[1, 20, 30, 40], max_tokens=3, temperature=0)
    assert ids.usage.prompt_tokens == 4
    stream = list(c.completions.create(model="bot", prompt="the quick brown fox", max_tokens=6, temperature=0, stream=True))
    plain = c.completions.create(model="bot", prompt="the quick brown fox", max_tokens=6, temperature=0)
    assert "".join(ch.choices[0].text for ch in stream) == plain.choices[0].text


def test_response_format_json_object(server: Any) -> None:
    import openai

    c = server.client()
    msgs = [{"role": "user", "content": "Answer in JSON."}]
    r = c.chat.completions.create(model="bot", messages=msgs, max_tokens=4, response_format={"type": "json_object"})
    assert r.choices[0].message.content is not None
    with pytest.raises(openai.BadRequestError, match="json"):
        c.chat.completions.create(model="bot", messages=CHAT, max_tokens=4, response_format={"type": "json_object"})
    with pytest.raises(openai.BadRequestError, match="json_schema"):
        c.chat.completions.create(model="bot", messages=msgs, max_tokens=4,
                                  response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}})


def test_concurrent_batched_requests_match_sequential(server: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    c = server.client()
    prompts = ["the quick brown fox", "a teacher answers", "hello", "small models run fast on one machine"]

    def run(p: str) -> str:
        return c.completions.create(model="bot", prompt=p, max_tokens=24, temperature=0, extra_body={"ignore_eos": True}).choices[0].text

    alone = [run(p) for p in prompts]
    with ThreadPoolExecutor(4) as ex:
        together = list(ex.map(run, prompts))
    assert together == alone
