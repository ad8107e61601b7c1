"""Bearer-token auth as plain ASGI middleware: constant-time comparison, ``/health`` (and optionally ``/metrics``) open.

Written as raw ASGI rather than an HTTP middleware class so streaming responses and disconnect
detection pass through untouched.
"""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send

_BODY = json.dumps(
    {
        "error": {
            "message": "missing or wrong API key: send 'Authorization: Bearer KEY'",
            "type": "authentication_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
).encode()


def bearer_token(scope: Scope) -> bytes:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else b""
    return b""


class BearerAuth:
    """Refuses HTTP requests without ``Authorization: Bearer <key>`` (401, OpenAI's error shape)."""

    def __init__(self, app: ASGIApp, *, key: str, open_paths: frozenset[str] = frozenset({"/health"}), on_reject=None) -> None:
        self.app = app
        self.key = key.encode()
        self.open_paths = open_paths
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") == "OPTIONS" or scope.get("path") in self.open_paths:
            await self.app(scope, receive, send)
            return
        if hmac.compare_digest(bearer_token(scope), self.key):
            await self.app(scope, receive, send)
            return
        if self.on_reject is not None:
            self.on_reject(scope)
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
            }
        )
        await send({"type": "http.response.body", "body": _BODY})
