"""Aliases under traffic (new requests follow the alias, in-flight ones finish on the old version), canary split, rollback."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
from serve_helpers import CHAT, wait_until

from slmops.serve.resolve import CACHE_S


def version_of(server: Any, model: str) -> str:
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"model": model, "messages": CHAT, "max_tokens": 2}, timeout=30)
    assert r.status_code == 200, r.text
    return r.headers["x-slmops-model-version"]


def test_alias_switch_under_traffic(start_server: Any, monkeypatch: Any) -> None:
    from serve_helpers import SlowEngine

    import slmops.serve.pool as pool_mod

    real = pool_mod.make_engine
    monkeypatch.setattr(pool_mod, "make_engine", lambda rt, parallel, **kw: SlowEngine(real(rt, parallel, **kw), 0.015))
    server = start_server(models=["bot@prod"], parallel=4, max_queue=32)
    store = server.store
    store.set_alias("bot", "prod", 1)
    try:
        # a long request starts on bot:1 and must finish there
        long_body = {"model": "bot@prod", "messages": CHAT, "max_tokens": 300, "ignore_eos": True, "stream": True,
                     "stream_options": {"include_usage": True}}
        result: dict[str, Any] = {}

        def long_request() -> None:
            with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=long_body, timeout=60) as r:
                result["version"] = r.headers["x-slmops-model-version"]
                result["lines"] = [ln for ln in r.iter_lines() if ln]

        seen: list[tuple[float, float, str, int]] = []  # (started, finished, version, status)
        stop = threading.Event()

        def traffic() -> None:
            deadline = time.monotonic() + 20
            while not stop.is_set() and time.monotonic() < deadline:
                t0 = time.monotonic()
                r = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "bot@prod", "messages": CHAT, "max_tokens": 2}, timeout=30)
                seen.append((t0, time.monotonic(), r.headers.get("x-slmops-model-version", ""), r.status_code))

        long_t = threading.Thread(target=long_request)
        long_t.start()
        workers = [threading.Thread(target=traffic) for _ in range(2)]
        for w in workers:
            w.start()
        assert wait_until(lambda: len(seen) >= 4, timeout=10)
        store.set_alias("bot", "prod", 2)  # what `slmops models alias bot@prod bot:2` does
        switched = time.monotonic()
        assert wait_until(lambda: sum(1 for t, _, _, _ in seen if t > switched + CACHE_S + 0.1) >= 4, timeout=10)
        assert long_t.is_alive(), "the long request should still be running after the switch"
        stop.set()
        for w in workers:
            w.join(timeout=30)
        long_t.join(timeout=60)

        assert all(status == 200 for _, _, _, status in seen), "no request may fail during the switch"
        before = {v for _, done, v, _ in seen if done < switched}
        after = {v for started, _, v, _ in seen if started > switched + CACHE_S + 0.1}
        assert before == {"bot:1"} and after == {"bot:2"}
        assert result["version"] == "bot:1"
        assert result["lines"][-1] == "data: [DONE]"
        assert '"completion_tokens":300' in result["lines"][-2], "the in-flight request finished on the old version"
        # rollback is re-pointing the alias
        store.set_alias("bot", "prod", 1)
        time.sleep(CACHE_S + 0.05)
        assert version_of(server, "bot@prod") == "bot:1"
    finally:
        store.set_alias("bot", "prod", 1)


def test_canary_split_with_per_version_metrics(start_server: Any) -> None:
    server = start_server(canary={"bot@prod": {"bot@prod": 50, "bot@canary": 50}}, canary_seed=0)
    versions = [version_of(server, "bot@prod") for _ in range(24)]
    assert set(versions) == {"bot:1", "bot:2"}
    assert 4 <= versions.count("bot:2") <= 20
    metrics = httpx.get(f"{server.url}/metrics").text
    for v in ("bot:1", "bot:2"):
        n = versions.count(v)
        assert f'slmops_requests_total{{model="bot@prod",route="chat",status="200",version="{v}"}} {float(n)}' in metrics
    assert [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]] == ["bot@prod"]
    # each branch can still be asked for by name
    assert version_of(server, "bot@canary") == "bot:2"


def test_parse_canary_and_durations() -> None:
    import pytest

    from slmops.errors import ConfigError
    from slmops.serve import parse_canary, parse_duration

    assert parse_canary("bot@prod=90,bot@canary=10") == {"bot@prod": 90.0, "bot@canary": 10.0}
    for bad in ("bot@prod", "bot@prod=90", "a=1,b=x", "a=0,b=0"):
        with pytest.raises(ConfigError):
            parse_canary(bad)
    assert parse_duration("10m") == 600 and parse_duration("1.5h") == 5400 and parse_duration("250ms") == 0.25 and parse_duration("7") == 7
    with pytest.raises(ConfigError, match="--ttl"):
        parse_duration("soon")
