"""Edge guards as plain ASGI middleware: a request-body size limit, and Host/Origin checks for a keyless server.

* :class:`BodyLimit` answers 413 (OpenAI's error shape) to a body larger than ``--max-body``: at once
  when ``Content-Length`` says so, else while a chunked body arrives, before the app parses any of it.
* :class:`LocalOnly` protects a server without an API key from web pages: a page on another site
  can make the browser send requests to ``127.0.0.1`` (and, by re-pointing its own DNS name at
  127.0.0.1 — *DNS rebinding* — even read the answers). So a keyless server answers only requests
  whose ``Host`` is one of its own names (``localhost``, ``127.0.0.1``, ``[::1]``, the ``--host`` it
  binds, and ``--allowed-host`` names), and refuses a request whose ``Origin`` is another site
  (unless ``--cors-origin`` allows it). With an API key neither check applies: a page cannot send
  the key.

Both are raw ASGI (not ``BaseHTTPMiddleware``) so streaming responses and disconnects pass through untouched.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})

Reject = Callable[[Scope, int, str], None]


def error_body(message: str, *, code: str, type: str = "invalid_request_error") -> bytes:
    return json.dumps({"error": {"message": message, "type": type, "param": None, "code": code}}).encode()


async def send_error(send: Send, status: int, message: str, *, code: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = error_body(message, code=code)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value)
    return None


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413 before the app reads them."""

    def __init__(self, app: ASGIApp, *, limit: int, on_reject: Reject | None = None) -> None:
        self.app = app
        self.limit = limit
        self.on_reject = on_reject

    def _message(self) -> str:
        return f"the request body is larger than this server's limit of {self.limit:,} bytes (slmops serve --max-body)"

    async def _refuse(self, scope: Scope, send: Send) -> None:
        if self.on_reject is not None:
            self.on_reject(scope, 413, "request_too_large")
        await send_error(send, 413, self._message(), code="request_too_large", headers=[(b"connection", b"close")])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.strip().isdigit() or int(length) > self.limit:
                await self._refuse(scope, send)
                return
            await self.app(scope, receive, send)  # the HTTP server holds the body to its declared length
            return
        # no Content-Length (chunked): read up to the limit here, then hand the body over in one piece
        chunks: list[bytes] = []
        size = 0
        first: Message | None = None
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                first = msg  # the client left: let the app see it
                break
            body = msg.get("body", b"")
            size += len(body)
            if size > self.limit:
                await self._refuse(scope, send)
                return
            chunks.append(body)
            if not msg.get("more_body", False):
                break
        pending: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
        if first is not None:
            pending.append(first)

        async def replay() -> Message:
            if pending:
                return pending.pop(0)
            return await receive()

        await self.app(scope, replay, send)


def host_of(value: str) -> str:
    """``"127.0.0.1:8000"`` → ``"127.0.0.1"``, ``"[::1]:8000"`` → ``"::1"``, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value


class LocalOnly:
    """For a keyless server: answer only requests addressed to one of its own host names and not sent by another site."""

    def __init__(self, app: ASGIApp, *, hosts: Iterable[str], origins: Iterable[str] = (), on_reject: Reject | None = None,
                 open_paths: frozenset[str] = frozenset({"/health"})) -> None:
        self.app = app
        self.open_paths = open_paths  # liveness probes address a pod by IP; /health holds nothing worth stealing
        self.hosts = frozenset(host_of(h) for h in hosts)
        self.any_host = "*" in self.hosts
        self.origins = frozenset(o.rstrip("/").lower() for o in origins)
        self.on_reject = on_reject

    def _host_ok(self, host: str) -> bool:
        return self.any_host or host in self.hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.open_paths:
            await self.app(scope, receive, send)
            return
        raw_host = (_header(scope, b"host") or b"").decode("latin-1")
        host = host_of(raw_host)
        if not self._host_ok(host):
            await self._refuse(scope, send, "host_not_allowed",
                               f"Host {raw_host[:100]!r} is not a name of this server; a server without an API key answers only "
                               "localhost, 127.0.0.1, [::1] and its --host (add names with --allowed-host, or set --api-key)")
            return
        origin = _header(scope, b"origin")
        if origin is not None:
            text = origin.decode("latin-1").rstrip("/").lower()
            try:
                origin_host = urlsplit(text).hostname or ""
            except ValueError:
                origin_host = ""
            if text not in self.origins and not (origin_host and self._host_ok(origin_host)):
                await self._refuse(scope, send, "origin_not_allowed",
                                   f"requests from the web page at {text[:100]!r} are refused by a server without an API key "
                                   "(allow that site with --cors-origin, or set --api-key)")
                return
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, send: Send, code: str, message: str) -> None:
        if self.on_reject is not None:
            self.on_reject(scope, 403, code)
        await send_error(send, 403, message, code=code)


def local_hosts(bind: str, extra: Iterable[str]) -> set[str]:
    """The host names a keyless server bound to ``bind`` answers."""
    hosts = set(LOCAL_HOSTS) | {host_of(h) for h in extra}
    if bind not in WILDCARD_HOSTS:
        hosts.add(host_of(bind))
    return hosts
