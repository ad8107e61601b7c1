"""Behaviour under load: a bounded queue (503 + Retry-After), disconnects that stop generation, per-request timeouts."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
from serve_helpers import CHAT, wait_until

LONG = {"model": "bot", "messages": CHAT, "max_tokens": 300, "ignore_eos": True, "temperature": 0}


def stream_until_first_chunk(url: str, body: dict[str, Any]) -> tuple[httpx.Client, Any, Any]:
    client = httpx.Client(timeout=30)
    cm = client.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True})
    resp = cm.__enter__()
    assert resp.status_code == 200
    lines = resp.iter_lines()
    next(ln for ln in lines if ln.startswith("data:"))
    return client, cm, lines


def test_queue_overflow_is_503_with_retry_after(start_server: Any, slow_opener: Any) -> None:
    opener, _ = slow_opener(0.01)
    server = start_server(models=["bot"], parallel=1, max_queue=1, opener=opener)
    client, cm, _ = stream_until_first_chunk(server.url, LONG)  # holds the only slot
    sched = server.entry("bot:2").scheduler
    queued: dict[str, Any] = {}
    t = threading.Thread(target=lambda: queued.update(r=httpx.post(f"{server.url}/v1/chat/completions", json={**LONG, "max_tokens": 2}, timeout=60)))
    t.start()
    assert wait_until(lambda: sched.waiting == 1)
    t0 = time.monotonic()
    r = httpx.post(f"{server.url}/v1/chat/completions", json={**LONG, "max_tokens": 2}, timeout=30)
    assert time.monotonic() - t0 < 2, "an overflowing request must be refused at once, not wait"
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["code"] == "queue_full"
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'slmops_queue_depth{model="bot:2"} 1.0' in metrics
    cm.__exit__(None, None, None)  # the streaming client leaves: the queued one gets the slot
    client.close()
    t.join(timeout=30)
    assert queued["r"].status_code == 200
    assert 'slmops_errors_total{kind="queue_full"} 1.0' in httpx.get(f"{server.url}/metrics").text


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_stops_generation_within_a_second(start_server: Any, slow_opener: Any, stream: bool) -> None:
    opener, made = slow_opener(0.01)
    server = start_server(models=["bot"], parallel=1, max_queue=0, opener=opener)
    if stream:
        client, cm, _ = stream_until_first_chunk(server.url, LONG)
        cm.__exit__(None, None, None)
        client.close()
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/v1/chat/completions", json=LONG, timeout=0.3)
    t0 = time.monotonic()
    rt = made[0]
    assert wait_until(lambda: rt.active == 0, timeout=1.0), "generation kept running after the client left"
    sched = server.entry("bot:2").scheduler
    assert wait_until(lambda: sched.running == 0, timeout=1.0)
    assert time.monotonic() - t0 < 1.0
    made_then = rt.generated
    assert made_then < 300
    time.sleep(0.1)
    assert rt.generated == made_then
    # the slot is really free: with max_queue=0 the next request still runs at once
    r = httpx.post(f"{server.url}/v1/chat/completions", json={**LONG, "max_tokens": 2}, timeout=30)
    assert r.status_code == 200
    server.service.requestlog.flush()
    from slmops.monitor.requestlog import query

    statuses = [row["status"] for row in query(server.service.requestlog.path)]
    assert 499 in statuses


def test_timeout_is_504(start_server: Any, slow_opener: Any) -> None:
    opener, made = slow_opener(0.02)
    server = start_server(models=["bot"], parallel=1, timeout_s=0.4, opener=opener)
    r = httpx.post(f"{server.url}/v1/chat/completions", json=LONG, timeout=30)
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error"
    assert wait_until(lambda: made[0].active == 0, timeout=1.0)
    # streamed: the error arrives as the last event before [DONE]
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={**LONG, "stream": True}, timeout=30) as s:
        lines = [ln for ln in s.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]" and '"timeout"' in lines[-2]


def test_interleaved_streams_all_finish(start_server: Any) -> None:
    server = start_server(models=["bot"], parallel=4, max_queue=8)
    from concurrent.futures import ThreadPoolExecutor

    def run(i: int) -> int:
        c = server.client()
        chunks = list(c.chat.completions.create(model="bot", messages=[{"role": "user", "content": f"question {i}"}], max_tokens=40,
                                                temperature=0, stream=True, stream_options={"include_usage": True},
                                                extra_body={"ignore_eos": True}))
        return chunks[-1].usage.completion_tokens

    with ThreadPoolExecutor(8) as ex:
        assert list(ex.map(run, range(8))) == [40] * 8
    batcher = server.entry("bot:2").engine.batcher
    assert batcher.rows_stepped > batcher.steps, "concurrent requests should share forward passes"


def test_the_server_keeps_a_template_worker_per_slot(start_server: Any) -> None:
    # renders run on held slots: with fewer idle workers kept, every burst of chats would start processes again
    server = start_server(parallel=3, max_loaded=2)
    assert server.service._renderers.keep_idle == 6


def test_the_server_streams_through_uvloop_and_httptools() -> None:
    # the serve extra installs both and uvicorn's "auto" picks them: the stack benchmarks/serve_http_stacks.py measures
    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    assert AutoHTTPProtocol is HttpToolsProtocol
    assert uvicorn.Config(app="slmops.serve:create_app").get_loop_factory().__module__.startswith("uvloop")
