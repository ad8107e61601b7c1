"""The request log (metadata only unless --log-content), ``slmops logs``, and ``slmops chat --url`` against our server."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import httpx
import pytest
from serve_helpers import CHAT

from slmops.monitor.requestlog import query


def test_request_log_keeps_metadata_only_by_default(start_server: Any, tmp_path: Any) -> None:
    server = start_server(models=["bot"], request_log=tmp_path / "meta.db")
    c = server.client()
    c.chat.completions.create(model="bot", messages=CHAT, max_tokens=3, user="alice")
    httpx.post(f"{server.url}/v1/chat/completions", json={"model": "nope", "messages": CHAT})
    server.service.requestlog.flush()
    rows = query(tmp_path / "meta.db")
    assert [r["status"] for r in rows] == [404, 200]
    ok = rows[1]
    assert ok["model"] == "bot" and ok["version"] == "bot:2" and ok["route"] == "chat" and ok["user"] == "alice"
    assert ok["prompt_tokens"] > 0 and ok["completion_tokens"] == 3 and ok["latency_s"] > 0 and ok["ttft_s"] > 0
    assert ok["client"] == "127.0.0.1"
    assert ok["prompt"] is None and ok["completion"] is None


def test_request_log_with_content(start_server: Any, tmp_path: Any) -> None:
    server = start_server(models=["bot"], request_log=tmp_path / "content.db", log_content=True)
    r = server.client().chat.completions.create(model="bot", messages=CHAT, max_tokens=3)
    server.service.requestlog.flush()
    row = query(tmp_path / "content.db")[0]
    assert "What is a small model?" in row["prompt"] and row["completion"] == r.choices[0].message.content


def test_logs_cli(start_server: Any, tmp_path: Any, cli: Any) -> None:
    path = tmp_path / "cli.db"
    server = start_server(models=["bot", "bot:1"], request_log=path)
    c = server.client()
    c.chat.completions.create(model="bot", messages=CHAT, max_tokens=2)
    c.completions.create(model="bot:1", prompt="hi", max_tokens=2)
    server.service.requestlog.flush()
    res = cli("logs", "--json", "--log-db", str(path))
    assert res.code == 0 and [r["model"] for r in res.json] == ["bot:1", "bot"]
    res = cli("logs", "--json", "--log-db", str(path), "--model", "bot:1")
    assert [r["route"] for r in res.json] == ["completions"]
    assert cli("logs", "--json", "--log-db", str(path), "--since", "1h").json
    time.sleep(1.1)
    assert cli("logs", "--json", "--log-db", str(path), "--since", "1s").json == []
    human = cli("logs", "--log-db", str(path))
    assert human.code == 0 and "bot:1" in human.out


def test_chat_cli_against_a_server(start_server: Any, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    server = start_server(models=["bot:1"], api_key="k3y")
    monkeypatch.setenv("TEST_KEY", "k3y")
    monkeypatch.setattr("sys.stdin", io.StringIO("hello there\n/reset\nand again\n/exit\n"))
    res = cli("chat", "--url", server.url, "--model", "bot:1", "--max-tokens", "4", "--api-key-env", "TEST_KEY")
    assert res.code == 0, res.err
    assert res.out.count("model>") == 2
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    res = cli("chat", "--url", f"{server.url}/v1", "--model", "bot:1")
    assert res.code == 1 and "401" in res.err
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    res = cli("chat", "--url", server.url, "--model", "missing", "--api-key-env", "TEST_KEY")
    assert res.code == 1 and "404" in res.err


def test_stream_chat_client_errors_without_a_server() -> None:
    from slmops.client import OpenAIClient, Retry, normalize_base_url
    from slmops.errors import ConfigError, OfflineError
    from slmops.serve.background import free_port

    assert normalize_base_url("http://h:1") == "http://h:1/v1" and normalize_base_url("http://h:1/api/v1/") == "http://h:1/api/v1"
    with pytest.raises(ConfigError):
        normalize_base_url("ftp://x")
    with OpenAIClient(f"http://127.0.0.1:{free_port()}/v1", timeout_s=2, retry=Retry(max_retries=1, base_s=0.01)) as client, \
            pytest.raises(OfflineError):
        list(client.stream({"model": "m", "messages": CHAT}))


def test_serve_cli_validates_before_starting(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    res = cli("serve", "bot", "--api-key-env", "NO_SUCH_KEY_VAR")
    assert res.code == 1 and "NO_SUCH_KEY_VAR" in res.err
    res = cli("serve", "bot", "--ttl", "whenever")
    assert res.code == 1 and "--ttl" in res.err
    res = cli("serve", "bot", "--canary", "bot@prod")
    assert res.code == 1 and "--canary" in res.err
    assert json.loads(json.dumps({"ok": True}))
