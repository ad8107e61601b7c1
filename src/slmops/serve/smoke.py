"""A serve smoke check: start the server on 127.0.0.1, answer one chat request through the official
``openai`` client, stop. Used by the recipe action ``serve-smoke`` (the quickstart's last step)."""

from __future__ import annotations

from typing import Any

from slmops._optional import require
from slmops.errors import SlmopsError
from slmops.store.artifact import Artifact
from slmops.store.registry import Store


def smoke_check(
    target: Artifact,
    *,
    store: Store,
    model: str | None = None,
    prompt: str = "Where is my order #12345?",
    max_tokens: int = 16,
    **_: Any,
) -> str:
    """Serve ``target`` (as ``model``, default its latest registry name) and ask it one question; returns a summary."""
    openai = require("openai", extra="serve", purpose="the serve smoke check")
    from slmops.serve.app import create_app
    from slmops.serve.config import ServeConfig
    from slmops.testing.server import running_server

    names = store.names_of(target.digest)
    model_id = model or (names[-1] if names else f"sha256:{target.digest}")
    app = create_app(ServeConfig(models=[model_id], port=0, log_requests=False), store=store)
    with running_server(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="smoke-check", max_retries=0, timeout=120)
        try:
            reply = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": prompt}],
                                                   max_tokens=max_tokens, temperature=0)  # greedy: the same answer every run
        except openai.APIError as exc:
            raise SlmopsError(f"serve smoke check of {model_id} failed", why=str(exc), fix="run `slmops serve` by hand and check its log") from exc
    text = reply.choices[0].message.content or ""
    return f"served {model_id} at {url}: {prompt!r} -> {text!r} ({reply.usage.completion_tokens if reply.usage else '?'} tokens)"
