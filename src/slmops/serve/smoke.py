"""A serve smoke check: start the server on 127.0.0.1, answer one chat request through the shared client, stop.

Registered as the recipe action ``serve-smoke`` (the quickstart's last step); its ``config`` is a
:class:`SmokeConfig`, so an unknown key is an error that names it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from slmops.errors import SlmopsError
from slmops.pipeline.actions import action, action_config

if TYPE_CHECKING:
    from slmops.pipeline.recipe import StepSpec
    from slmops.store.artifact import Artifact
    from slmops.store.registry import Store


class SmokeConfig(BaseModel):
    """The ``config:`` of a ``serve-smoke`` step."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, description="Model id to serve the target as (default: its latest registry name)")
    prompt: str = Field("Where is my order #12345?", description="The one question asked")
    max_tokens: int = Field(16, ge=1, description="Longest answer, in tokens")


def smoke_check(target: Artifact, *, store: Store, model: str | None = None, prompt: str = "Where is my order #12345?",
                max_tokens: int = 16) -> str:
    """Serve ``target`` (as ``model``, default its latest registry name) and ask it one question; returns a summary."""
    from slmops.client import ClientError, OpenAIClient, Retry, chat_body
    from slmops.serve.app import create_app
    from slmops.serve.background import running_server
    from slmops.serve.config import ServeConfig

    names = store.names_of(target.digest)
    model_id = model or (names[-1] if names else f"sha256:{target.digest}")
    app = create_app(ServeConfig(models=[model_id], port=0, log_requests=False), store=store)
    with running_server(app) as url, OpenAIClient(f"{url}/v1", timeout_s=120, retry=Retry(max_retries=0), purpose="the serve smoke check") as client:
        try:  # greedy: the same answer every run
            reply = client.chat(chat_body(model_id, [{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0)).body
        except ClientError as exc:
            raise SlmopsError(f"serve smoke check of {model_id} failed", why=exc.message, fix="run `slmops serve` by hand and check its log") from exc
    text = reply["choices"][0]["message"].get("content") or ""
    tokens = (reply.get("usage") or {}).get("completion_tokens", "?")
    return f"served {model_id} at {url}: {prompt!r} -> {text!r} ({tokens} tokens)"


@action("serve-smoke", config=SmokeConfig)
def serve_smoke(spec: StepSpec, target: Artifact, store: Store) -> str:
    """The recipe action: :func:`smoke_check` with the step's ``config``."""
    cfg = action_config("serve-smoke", spec.config, "serve-smoke")
    assert isinstance(cfg, SmokeConfig)
    return smoke_check(target, store=store, **cfg.model_dump())
