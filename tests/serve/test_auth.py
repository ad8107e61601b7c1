"""Auth (Bearer key on every route but /health; /metrics configurable) and CORS (off unless origins are listed)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from serve_helpers import CHAT

KEY = "s3cret-key-for-tests"


def test_every_route_but_health_needs_the_key(start_server: Any) -> None:
    import openai

    server = start_server(models=["bot"], api_key=KEY)
    assert httpx.get(f"{server.url}/health").status_code == 200
    for method, path in [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("GET", "/metrics"),
                         ("GET", "/openai/loadedmodels"), ("POST", "/openai/load/bot"), ("POST", "/v1/load_lora_adapter"),
                         ("GET", "/openapi.json"), ("GET", "/docs")]:
        r = httpx.request(method, f"{server.url}{path}", json={})
        assert r.status_code == 401, path
        assert r.json()["error"]["type"] == "authentication_error" and r.headers["www-authenticate"] == "Bearer"
        assert httpx.request(method, f"{server.url}{path}", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.request(method, f"{server.url}{path}", headers={"Authorization": KEY}).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="wrong").models.list()
    ok = server.client(api_key=KEY)
    assert [m.id for m in ok.models.list().data] == ["bot"]
    assert ok.chat.completions.create(model="bot", messages=CHAT, max_tokens=2).choices
    assert httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert 'slmops_errors_total{kind="invalid_api_key"}' in httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text


def test_metrics_can_be_public(start_server: Any) -> None:
    server = start_server(models=["bot"], api_key=KEY, metrics_auth=False)
    assert httpx.get(f"{server.url}/metrics").status_code == 200
    assert httpx.get(f"{server.url}/v1/models").status_code == 401


def test_no_key_no_auth_and_no_cors_by_default(start_server: Any) -> None:
    server = start_server(models=["bot"])
    assert httpx.get(f"{server.url}/v1/models").status_code == 200
    r = httpx.get(f"{server.url}/v1/models", headers={"Origin": "http://evil.example"})  # keyless: another site is refused
    assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed" and "access-control-allow-origin" not in r.headers
    pre = httpx.options(f"{server.url}/v1/chat/completions", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in pre.headers


def test_cors_for_listed_origins_only(start_server: Any) -> None:
    server = start_server(models=["bot"], api_key=KEY, cors_origins=["http://app.local"])
    pre = httpx.options(f"{server.url}/v1/chat/completions",
                        headers={"Origin": "http://app.local", "Access-Control-Request-Method": "POST",
                                 "Access-Control-Request-Headers": "authorization,content-type"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://app.local"
    other = httpx.get(f"{server.url}/v1/models", headers={"Origin": "http://evil.example", "Authorization": f"Bearer {KEY}"})
    assert "access-control-allow-origin" not in other.headers


def test_binds_loopback_by_default() -> None:
    from slmops.serve import ServeConfig

    assert ServeConfig().host == "127.0.0.1"
