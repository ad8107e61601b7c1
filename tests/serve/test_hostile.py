"""The server under hostile or careless input (issue 17): real server on 127.0.0.1, httpx and the official openai client.

Each test is one class of attack: oversized bodies and prompts (item 2), label flooding of
``/metrics`` (3), a burst against ``--max-queue`` (4), a web page driving a keyless server (5),
out-of-range values and silently cut streams (8), and ids that differ only in whitespace (10).
The chat-template attacks (1) and server-side faults (10) are in ``test_hostile_templates.py``.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import httpx
import pytest
from serve_helpers import CHAT, wait_until

LONG = {"model": "bot", "messages": CHAT, "max_tokens": 300, "ignore_eos": True, "temperature": 0}


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


class Counting:
    """A real runtime that counts how often a prompt is tokenized (to show a refusal came before tokenizing)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.encoded = 0

    def __getattr__(self, item: str) -> Any:
        return getattr(self.inner, item)

    def encode_prompt(self, prompt: Any) -> list[int]:
        self.encoded += 1
        return list(self.inner.encode_prompt(prompt))

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.encoded += 1
        return list(self.inner.tokenize(text, add_special_tokens))


class FailsMidStream:
    """A real runtime whose generator breaks (an unexpected error, not a SlmopsError) after two tokens."""

    name = "fails-mid-stream"

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.capabilities = replace(inner.capabilities, batching=False)  # served through its own stream, one at a time

    def __getattr__(self, item: str) -> Any:
        return getattr(self.inner, item)

    def stream(self, prompt: Any, params: Any = None, *, adapter: str | None = None) -> Any:
        inner = self.inner.stream(prompt, params, adapter=adapter)

        def gen() -> Any:
            try:
                for i, ev in enumerate(inner):
                    if i == 2:
                        raise RuntimeError("the engine broke")
                    yield ev
            finally:
                inner.close()

        return gen()


def wrapping(cls: type) -> tuple[Any, list[Any]]:
    from slmops.runtimes import open_runtime

    made: list[Any] = []

    def opener(artifact: Any, runtime: str = "auto") -> Any:
        made.append(cls(open_runtime(artifact, runtime=runtime)))
        return made[-1]

    return opener, made


def sse_events(lines: list[str]) -> list[Any]:
    return [ln.removeprefix("data: ") if ln == "data: [DONE]" else json.loads(ln.removeprefix("data: "))
            for ln in lines if ln.startswith("data: ")]


# ---------------------------------------------------------------- item 2: body size, prompt length


def test_a_body_over_the_limit_is_413_before_it_is_read(start_server: Any) -> None:
    import openai

    server = start_server(models=["bot"], max_body_bytes=64 * 1024)
    big = {"model": "bot", "messages": [{"role": "user", "content": "x" * 100_000}]}
    err = error_of(httpx.post(f"{server.url}/v1/chat/completions", json=big, timeout=30), 413)
    assert err["code"] == "request_too_large" and "65,536" in err["message"]

    def chunked() -> Any:  # no Content-Length: counted as it arrives
        yield b'{"model": "bot", "prompt": "'
        for _ in range(100):
            yield b"y" * 1000
        yield b'"}'

    r = httpx.post(f"{server.url}/v1/completions", content=chunked(), headers={"content-type": "application/json"}, timeout=30)
    assert error_of(r, 413)["code"] == "request_too_large"
    with pytest.raises(openai.APIStatusError) as exc:
        server.client().completions.create(model="bot", prompt="z" * 70_000, max_tokens=1)
    assert exc.value.status_code == 413
    # a body under the limit, sent chunked, still works
    ok = httpx.post(f"{server.url}/v1/completions", content=iter([b'{"model": "bot", "prompt": "hi", ', b'"max_tokens": 2}']),
                    headers={"content-type": "application/json"}, timeout=30)
    assert ok.status_code == 200, ok.text
    assert 'slmops_errors_total{kind="request_too_large"} 3.0' in httpx.get(f"{server.url}/metrics").text


def test_a_prompt_too_long_for_any_tokenizer_is_refused_without_tokenizing(start_server: Any) -> None:
    from slmops.serve.service import MAX_CHARS_PER_TOKEN

    opener, made = wrapping(Counting)
    server = start_server(models=["bot"], opener=opener)
    assert httpx.post(f"{server.url}/v1/completions", json={"model": "bot", "prompt": "hi", "max_tokens": 1}).status_code == 200
    rt = made[0]
    before = rt.encoded
    chars = MAX_CHARS_PER_TOKEN * rt.context_length + 1
    for path, body in [("/v1/chat/completions", {"model": "bot", "messages": [{"role": "user", "content": "a" * chars}]}),
                       ("/v1/completions", {"model": "bot", "prompt": "b" * chars}),
                       ("/v1/completions", {"model": "bot", "prompt": ["short", "c" * chars]})]:
        err = error_of(httpx.post(f"{server.url}{path}", json=body, timeout=30), 400)
        assert err["code"] == "context_length_exceeded" and str(rt.context_length) in err["message"]
        assert err["param"] in ("messages", "prompt")
    assert rt.encoded == before, "the prompt was tokenized before it was refused"


# ---------------------------------------------------------------- item 3: bounded metric labels


def labels(metrics: str, name: str) -> set[str]:
    return set(re.findall(rf'{name}="([^"]*)"', metrics))


def test_metric_labels_never_take_raw_paths_or_model_ids(start_server: Any) -> None:
    key = "k"
    server = start_server(models=["bot"], api_key=key)
    auth = {"Authorization": f"Bearer {key}"}
    junk = [uuid.uuid4().hex for _ in range(40)]
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for j in junk[:15]:
            assert c.get(f"/{j}").status_code == 401  # unauthenticated, any path
            assert c.post(f"/v1/chat/completions/{j}", json={}).status_code == 401
        for j in junk[15:30]:
            assert c.get(f"/{j}", headers=auth).status_code == 404
            assert c.post("/v1/chat/completions", json={"model": j, "messages": CHAT}, headers=auth).status_code == 404
            assert c.post("/v1/completions", json={"model": j, "prompt": "x", "seed": -1}, headers=auth).status_code == 400
            assert c.get(f"/v1/models/{j}", headers=auth).status_code == 404
            assert c.get(f"/v1/chat/completions?{j}=1", headers=auth).status_code == 405
        c.post("/v1/chat/completions", json={"model": "bot", "messages": CHAT, "max_tokens": 2}, headers=auth).raise_for_status()
        text = c.get("/metrics", headers=auth).text
    assert not any(j in text for j in junk)
    from slmops.serve.dashboard import router as dashboard
    from slmops.serve.routes import chat, completions, manage, models

    routes = {r.path for router in (chat.router, completions.router, models.router, manage.router, dashboard) for r in router.routes}
    assert labels(text, "route") <= routes | {"other", "chat", "completions"}
    assert {"other", "/v1/models/{model_id:path}", "/v1/chat/completions"} <= labels(text, "route")
    assert labels(text, "model") <= {"bot", "unknown", "", "bot:2"}  # served ids, and the loaded version in the gauges
    assert "unknown" in labels(text, "model") and "bot" in labels(text, "model")


# ---------------------------------------------------------------- item 4: atomic admission


def test_max_queue_holds_exactly_under_a_burst_of_streams(start_server: Any, slow_opener: Any) -> None:
    opener, _ = slow_opener(0.05)
    server = start_server(models=["bot"], parallel=1, max_queue=2, opener=opener)
    assert httpx.post(f"{server.url}/v1/completions", json={"model": "bot", "prompt": "hi", "max_tokens": 1}).status_code == 200
    sched = server.entry("bot:2").scheduler
    refused: list[httpx.Response] = []
    accepted: list[int] = []
    stop = threading.Event()
    barrier = threading.Barrier(20)

    def one(i: int) -> None:
        with httpx.Client(timeout=60) as c:
            barrier.wait()
            with c.stream("POST", f"{server.url}/v1/chat/completions", json={**LONG, "stream": True}) as r:
                if r.status_code != 200:
                    r.read()
                    refused.append(r)
                    return
                accepted.append(i)
                for _ in r.iter_lines():
                    if stop.is_set():
                        return

    with ThreadPoolExecutor(20) as ex:
        futures = [ex.submit(one, i) for i in range(20)]
        try:
            assert wait_until(lambda: len(refused) >= 17, timeout=30)
            assert wait_until(lambda: sched.running == 1 and sched.waiting == 2, timeout=10)
            assert len(refused) == 17 and sched.waiting == 2 and sched.running == 1
            for r in refused:
                assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1 and r.json()["error"]["code"] == "queue_full"
        finally:
            stop.set()
            server.service.pool.unload(server.entry("bot:2"), force=True)
            for f in futures:
                f.result(timeout=60)
    assert 1 <= len(accepted) <= 3


# ---------------------------------------------------------------- item 5: a keyless server and web pages


def test_keyless_server_answers_only_its_own_host_names(start_server: Any) -> None:
    server = start_server(models=["bot"])
    port = server.url.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", f"192.0.2.1:{port}", "127.0.0.1.evil.example"):
        r = httpx.get(f"{server.url}/v1/models", headers={"Host": host})
        assert error_of(r, 403)["code"] == "host_not_allowed", host
    assert httpx.get(f"{server.url}/health", headers={"Host": "10.0.0.7"}).status_code == 200  # probes address a pod by IP
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST"):
        assert httpx.get(f"{server.url}/v1/models", headers={"Host": host}).status_code == 200, host
    post = httpx.post(f"{server.url}/v1/completions", json={"model": "bot", "prompt": "hi", "max_tokens": 1},
                      headers={"Origin": "https://evil.example"})
    assert error_of(post, 403)["code"] == "origin_not_allowed"
    assert error_of(httpx.get(f"{server.url}/v1/models", headers={"Origin": "null"}), 403)["code"] == "origin_not_allowed"
    same = httpx.post(f"{server.url}/v1/completions", json={"model": "bot", "prompt": "hi", "max_tokens": 1},
                      headers={"Origin": f"http://127.0.0.1:{port}"})
    assert same.status_code == 200  # the dashboard's own page
    assert server.client().models.list().data[0].id == "bot"  # the official client sends Host 127.0.0.1:PORT


def test_host_checks_follow_the_configuration(start_server: Any) -> None:
    keyed = start_server(models=["bot"], api_key="k")
    assert httpx.get(f"{keyed.url}/v1/models", headers={"Host": "evil.example", "Authorization": "Bearer k"}).status_code == 200
    named = start_server(models=["bot"], allowed_hosts=["models.lan"])
    assert httpx.get(f"{named.url}/v1/models", headers={"Host": "models.lan:8000"}).status_code == 200
    assert httpx.get(f"{named.url}/v1/models", headers={"Host": "other.lan"}).status_code == 403
    anyhost = start_server(models=["bot"], allowed_hosts=["*"])
    assert httpx.get(f"{anyhost.url}/v1/models", headers={"Host": "whatever.example"}).status_code == 200
    text = httpx.get(f"{named.url}/metrics").text
    assert 'slmops_errors_total{kind="host_not_allowed"} 1.0' in text and "other.lan" not in text


def test_management_changes_state_only_on_post(start_server: Any) -> None:
    server = start_server(models=["bot"])
    assert error_of(httpx.get(f"{server.url}/openai/load/bot:1"), 405)["code"] == "method_not_allowed"
    assert httpx.get(f"{server.url}/openai/loadedmodels").json() == []
    assert "bot:1" not in [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]]
    assert httpx.post(f"{server.url}/openai/load/bot").status_code == 200
    assert error_of(httpx.get(f"{server.url}/openai/unload/bot", params={"force": "true"}), 405)["code"] == "method_not_allowed"
    assert httpx.get(f"{server.url}/openai/loadedmodels").json() == ["bot"]


def test_a_stream_cut_by_a_forced_unload_ends_with_an_error(start_server: Any, slow_opener: Any) -> None:
    import openai

    opener, _ = slow_opener(0.02)
    server = start_server(models=["bot"], parallel=1, opener=opener)
    with httpx.Client(timeout=30) as c, c.stream("POST", f"{server.url}/v1/chat/completions", json={**LONG, "stream": True}) as r:
        lines = r.iter_lines()
        first = next(ln for ln in lines if ln.startswith("data:"))
        assert c.post(f"{server.url}/openai/unload/bot", params={"force": "true"}).json()["forced"] is True
        events = sse_events([first, *lines])
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "model_unloaded"
    assert not any(ch.get("finish_reason") for e in events[:-2] for ch in e.get("choices", []))
    # the official client raises instead of handing back a truncated answer
    server2 = start_server(models=["bot"], parallel=1, opener=opener)
    stream = server2.client().chat.completions.create(model="bot", messages=CHAT, max_tokens=300, stream=True, extra_body={"ignore_eos": True})
    with pytest.raises(openai.APIError, match="unloaded"):
        for i, _ in enumerate(stream):
            if i == 1:
                httpx.post(f"{server2.url}/openai/unload/bot", params={"force": "true"})


# ---------------------------------------------------------------- item 8: ranges at the edge, streams never cut silently


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        ("/v1/chat/completions", {"seed": -1}, "seed"),
        ("/v1/chat/completions", {"seed": 2**64}, "seed"),
        ("/v1/completions", {"seed": -1}, "seed"),
        ("/v1/completions", {"seed": 10**30, "stream": True}, "seed"),
        ("/v1/chat/completions", {"max_tokens": -1}, "max_tokens"),
        ("/v1/chat/completions", {"max_tokens": 2**40}, "max_tokens"),
        ("/v1/chat/completions", {"max_completion_tokens": 2**63}, "max_completion_tokens"),
        ("/v1/completions", {"max_tokens": 2**31}, "max_tokens"),
        ("/v1/chat/completions", {"top_k": 2**40}, "top_k"),
        ("/v1/chat/completions", {"model": "bot:99999999999999999999"}, "model"),
        ("/v1/completions", {"model": "bot:18446744073709551616"}, "model"),
        ("/v1/chat/completions", {"model": "bot "}, "model"),
        ("/v1/chat/completions", {"model": " bot"}, "model"),
        ("/v1/completions", {"model": "bot\n"}, "model"),
    ],
)
def test_out_of_range_values_are_400_naming_the_field(module_servers: Any, path: str, extra: dict[str, Any], param: str) -> None:
    server = module_servers(models=["bot"])
    body = {"model": "bot", **({"messages": CHAT} if "chat" in path else {"prompt": "hi"}), "max_tokens": 2, **extra}
    err = error_of(httpx.post(f"{server.url}{path}", json=body, timeout=30), 400)
    assert err["param"] == param, err


def test_edge_values_in_range_work(module_servers: Any) -> None:
    server = module_servers(models=["bot"])
    c = server.client()
    r = c.chat.completions.create(model="bot", messages=CHAT, max_tokens=3, seed=2**64 - 1, n=2, temperature=1.0)
    assert len(r.choices) == 2
    assert c.completions.create(model="bot", prompt="hi", max_tokens=2, seed=0).choices[0].text is not None
    assert error_of(httpx.post(f"{server.url}/openai/load/bot%20"), 400)["param"] == "name"
    assert error_of(httpx.post(f"{server.url}/openai/load/bot:99999999999999999999"), 400)["param"] == "name"


def test_generation_params_refuse_out_of_range_values(cli: Any) -> None:
    from pydantic import ValidationError

    from slmops.runtimes.base import GenerationParams

    for bad in ({"seed": -1}, {"seed": 2**64}, {"max_tokens": 0}, {"max_tokens": 2**31}, {"top_k": -1}):
        with pytest.raises(ValidationError):
            GenerationParams(**bad)
    assert GenerationParams(seed=2**64 - 1).seed == 2**64 - 1
    res = cli("generate", "no-such-model", "hi", "--seed", "-1")
    assert res.code == 1 and "--seed" in res.err and "Traceback" not in res.err + res.out


@pytest.mark.parametrize("stream", [True, False])
def test_an_unexpected_failure_mid_stream_still_ends_the_stream(start_server: Any, stream: bool) -> None:
    opener, _ = wrapping(FailsMidStream)
    server = start_server(models=["bot"], parallel=1, opener=opener)
    body = {**LONG, "max_tokens": 20, "stream": stream}
    if not stream:
        err = error_of(httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30), 500)
        assert err["code"] == "internal" and err["type"] == "server_error"
        return
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=30) as r:
        events = sse_events(list(r.iter_lines()))
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "internal"
    assert not any(ch.get("finish_reason") for e in events[:-2] for ch in e.get("choices", []))
