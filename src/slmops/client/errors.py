"""What a failed request to an OpenAI-compatible server says: the OpenAI error shape read into a :class:`ClientError`."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from slmops.errors import ConfigError, OfflineError, SlmopsError


class ClientError(SlmopsError):
    """A request failed. ``status`` is the HTTP status (None: no HTTP answer); ``error`` a short label of the last failure
    (``HTTP 503``, ``timeout``, ``connection error (ConnectError)``, ``malformed response (…)``); ``attempts`` how many
    were made; ``retryable`` whether the failure was one the client retries; ``cancelled`` when a stop was asked for."""

    def __init__(self, what: str, *, status: int | None = None, error: str | None = None, attempts: int = 1,
                 retryable: bool = False, cancelled: bool = False, detail: str | None = None, why: str | None = None,
                 fix: str | None = None) -> None:
        self.status = status
        self.error = error or what
        self.attempts = attempts
        self.retryable = retryable
        self.cancelled = cancelled
        self.detail = detail if detail is not None else why
        super().__init__(what, why=why, fix=fix)


class ServerUnreachable(ClientError, OfflineError):
    """No HTTP answer at all: the connection was refused, dropped or not made."""


def error_detail(body: bytes | str) -> str:
    """The message of an OpenAI-style error body (``{"error": {"message": …}}``), else the body's start."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
        err = data.get("error", data) if isinstance(data, dict) else None
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:500]
        if isinstance(err, str):
            return err[:500]
    except ValueError:
        pass
    return text[:200]


def fix_for(status: int, base_url: str) -> str:
    """What to do about an HTTP error status from the server at ``base_url``."""
    if status in (401, 403):
        return "check the API key: the environment variable named by --api-key-env must hold a key the server accepts"
    if status == 404:
        return f"check the model id and the URL (GET {base_url}/models lists the server's models)"
    if status == 429:
        return "the server is rate-limiting: lower the concurrency or the request rate, or retry later"
    if status >= 500:
        return "the server failed: see its log"
    return "the server rejected the request: see the message"


def normalize_base_url(url: str, *, flag: str = "--url") -> str:
    """``http://host:port`` → ``http://host:port/v1``; a full ``…/chat/completions`` URL is cut back to its base.

    A URL carrying credentials is refused: URLs are recorded in manifests and logs; keys travel in headers.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{flag} {url!r} is not an http(s) URL", fix=f"e.g. {flag} http://127.0.0.1:8000/v1")
    if parts.username or parts.password:
        raise ConfigError(f"{flag} must not carry credentials", why="the URL is recorded in manifests and logs",
                          fix="put the key in an environment variable and name it with --api-key-env")
    path = parts.path.rstrip("/")
    for suffix in ("/chat/completions", "/completions", "/models"):
        path = path.removesuffix(suffix)
    if not path.endswith("/v1") and "/v1" not in path and "/openai" not in path:
        path += "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def auth_headers(api_key: str | None, header: str = "authorization") -> dict[str, str]:
    """The auth header for ``api_key``: ``Authorization: Bearer KEY``, or Azure's ``api-key: KEY``; none without a key."""
    if not api_key:
        return {}
    return {"api-key": api_key} if header == "api-key" else {"authorization": f"Bearer {api_key}"}


def chunk_error(chunk: dict[str, Any]) -> str | None:
    """The message of an error a server sent inside a stream (``data: {"error": …}``), else None."""
    err = chunk.get("error")
    if err is None:
        return None
    return str(err.get("message", err)) if isinstance(err, dict) else str(err)
