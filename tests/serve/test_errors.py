"""Bad input gets a 4xx in OpenAI's error shape — never a 500: malformed JSON, wrong types, unknown model, context overflow."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from serve_helpers import CHAT


@pytest.fixture(scope="module")
def server(module_servers: Any) -> Any:
    return module_servers(models=["bot"])


def post(server: Any, path: str, body: Any = None, *, raw: bytes | None = None) -> httpx.Response:
    if raw is not None:
        return httpx.post(f"{server.url}{path}", content=raw, headers={"content-type": "application/json"}, timeout=30)
    return httpx.post(f"{server.url}{path}", json=body, timeout=30)


def assert_error(r: httpx.Response, status: int, *, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code:
        assert err["code"] == code
    return err


def test_unknown_model_is_404(server: Any) -> None:
    import openai

    err = assert_error(post(server, "/v1/chat/completions", {"model": "nope", "messages": CHAT}), 404, code="model_not_found")
    assert "nope" in err["message"] and err["param"] == "model"
    assert_error(post(server, "/v1/completions", {"model": "bot:99", "prompt": "x"}), 404)
    assert_error(post(server, "/v1/completions", {"model": "../../etc", "prompt": "x"}), 404)
    with pytest.raises(openai.NotFoundError):
        server.client().chat.completions.create(model="other", messages=CHAT)
    assert_error(httpx.get(f"{server.url}/v1/models/nope"), 404)
    assert_error(httpx.get(f"{server.url}/no/such/route"), 404)


def test_context_overflow_names_both_numbers(server: Any) -> None:
    long = "word " * 600
    err = assert_error(post(server, "/v1/chat/completions", {"model": "bot", "messages": [{"role": "user", "content": long}],
                                                             "max_tokens": 100}), 400, code="context_length_exceeded")
    assert "512" in err["message"] and "100 in the completion" in err["message"]
    r = post(server, "/v1/completions", {"model": "bot", "prompt": "hello there", "max_tokens": 600})
    err = assert_error(r, 400, code="context_length_exceeded")
    assert "600" in err["message"] and "512" in err["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"model": "bot"},
        {"model": "bot", "messages": "hello"},
        {"model": "bot", "messages": []},
        {"model": "bot", "messages": [{"role": "wizard", "content": "x"}]},
        {"model": "bot", "messages": CHAT, "temperature": "hot"},
        {"model": "bot", "messages": CHAT, "temperature": 9},
        {"model": "bot", "messages": CHAT, "max_tokens": 0},
        {"model": "bot", "messages": CHAT, "max_tokens": -5},
        {"model": "bot", "messages": CHAT, "n": 100},
        {"model": "bot", "messages": CHAT, "top_logprobs": 3},
        {"model": "bot", "messages": CHAT, "top_p": 1.5},
        {"model": "bot", "messages": CHAT, "stop": [""]},
        {"model": "bot", "messages": CHAT, "stop": ["x"] * 20},
        {"model": "bot", "messages": CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]},
        {"model": "bot", "messages": CHAT, "logit_bias": {"5": 10}},
        {"model": "bot", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        {"model": 5, "messages": CHAT},
        [1, 2, 3],
        "just a string",
    ],
)
def test_bad_chat_bodies_are_400(server: Any, body: Any) -> None:
    assert_error(post(server, "/v1/chat/completions", body), 400)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "bot", "prompt": []},
        {"model": "bot", "prompt": [[]]},
        {"model": "bot", "prompt": [1, 999999]},
        {"model": "bot", "prompt": [-1]},
        {"model": "bot", "prompt": "x", "suffix": "y"},
        {"model": "bot", "prompt": "x", "best_of": 3},
        {"model": "bot", "prompt": "x", "logprobs": 9},
        {"model": "bot", "prompt": "x", "echo": True, "logprobs": 1},
        {"model": "bot", "prompt": {"a": 1}},
    ],
)
def test_bad_completion_bodies_are_400(server: Any, body: Any) -> None:
    assert_error(post(server, "/v1/completions", body), 400)


@pytest.mark.parametrize("raw", [b"{bad json", b"", b'{"model": "bot", "messages": [', b"\xff\xfe"])
def test_malformed_json_is_400(server: Any, raw: bytes) -> None:
    assert_error(post(server, "/v1/chat/completions", raw=raw), 400)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_lone_surrogate_in_text_is_400_not_500(server: Any, path: str) -> None:
    raw = b'{"model": "bot", "max_tokens": 2, ' + (
        b'"messages": [{"role": "user", "content": "hi \\ud800 there"}]}' if "chat" in path else b'"prompt": "hi \\ud800 there"}')
    r = post(server, path, raw=raw)
    assert_error(r, 400)
    assert "Unicode" in r.json()["error"]["message"]


def test_unknown_fields_are_ignored_and_wrong_method_is_405(server: Any) -> None:
    r = post(server, "/v1/chat/completions", {"model": "bot", "messages": CHAT, "max_tokens": 2, "some_future_field": {"x": 1}})
    assert r.status_code == 200
    assert_error(httpx.get(f"{server.url}/v1/chat/completions"), 405)


def test_bad_management_input(server: Any, tmp_path: Any) -> None:
    assert_error(post(server, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(tmp_path)}), 400, code="invalid_lora")
    assert_error(post(server, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "bot"}), 400, code="invalid_lora")
    assert_error(post(server, "/v1/load_lora_adapter", {"lora_name": "x"}), 400)
    assert_error(post(server, "/v1/unload_lora_adapter", {"lora_name": "never"}), 404)
    assert_error(httpx.post(f"{server.url}/openai/unload/zzz"), 404, code="model_not_loaded")
    assert_error(httpx.post(f"{server.url}/openai/load/nope"), 404)


def test_errors_are_counted(server: Any) -> None:
    post(server, "/v1/chat/completions", {"model": "nope", "messages": CHAT})
    post(server, "/v1/chat/completions", raw=b"{")
    text = httpx.get(f"{server.url}/metrics").text
    assert 'slmops_errors_total{kind="model_not_found"}' in text
    assert 'slmops_errors_total{kind="invalid_json"}' in text or 'slmops_errors_total{kind="invalid_value"}' in text
