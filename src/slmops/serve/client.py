"""A streaming chat client for any OpenAI-compatible server (slmops, Ollama, llama.cpp, Foundry Local, vLLM).

``stream_chat`` posts to ``{url}/chat/completions`` with ``stream: true`` and yields text deltas as
they arrive, through httpx (no SDK needed). ``base_url`` may be given with or without ``/v1``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from slmops._optional import require
from slmops.errors import ConfigError, OfflineError


def api_base(url: str) -> str:
    """``http://host:8000`` → ``http://host:8000/v1``; a URL with a path is kept as given."""
    url = url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"--url {url!r} is not an http(s) URL", fix="e.g. --url http://127.0.0.1:8000/v1")
    return url if parts.path not in ("", "/") else f"{url}/v1"


def _error_message(resp: Any) -> str:
    try:
        body = json.loads(resp.read() if hasattr(resp, "read") else resp.content)
        err = body.get("error", body)
        return str(err.get("message", err)) if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError):  # not JSON, or not the shape we know
        return f"HTTP {resp.status_code}"


def stream_chat(
    url: str,
    model: str,
    messages: list[dict[str, str]],
    *,
    api_key: str | None = None,
    timeout: float = 300.0,
    **params: Any,
) -> Iterator[str]:
    """Text deltas of one streamed chat completion; raises :class:`ConfigError` with the server's message on errors."""
    httpx = require("httpx", extra="serve", purpose="chat --url")
    base = api_base(url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = {"model": model, "messages": messages, "stream": True, **{k: v for k, v in params.items() if v is not None}}
    try:
        with httpx.stream("POST", f"{base}/chat/completions", json=body, headers=headers, timeout=timeout) as resp:
            if resp.status_code != 200:
                resp.read()
                raise ConfigError(f"{base} answered {resp.status_code}", why=_error_message(resp),
                                  fix="check --model (GET /v1/models lists them) and the API key")
            for line in resp.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    raise ConfigError(f"{base} failed mid-stream", why=str(chunk["error"].get("message", chunk["error"])))
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield text
    except httpx.TransportError as exc:
        raise OfflineError(f"cannot reach {base}", why=str(exc) or type(exc).__name__, fix="is the server running? check --url") from exc


def list_models(url: str, *, api_key: str | None = None, timeout: float = 10.0) -> list[str]:
    """The ids a server lists at ``/models``."""
    httpx = require("httpx", extra="serve", purpose="chat --url")
    base = api_base(url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        resp = httpx.get(f"{base}/models", headers=headers, timeout=timeout)
    except httpx.TransportError as exc:
        raise OfflineError(f"cannot reach {base}", why=str(exc) or type(exc).__name__, fix="is the server running? check --url") from exc
    if resp.status_code != 200:
        raise ConfigError(f"{base}/models answered {resp.status_code}", why=_error_message(resp))
    return [m["id"] for m in resp.json().get("data", [])]
