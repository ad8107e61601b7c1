"""What is evaluated: a local runtime or any OpenAI-compatible server, behind one small interface.

A :class:`Target` answers a chat (``chat(messages, max_tokens=…) -> Reply``) and describes itself
for the report. :class:`LocalTarget` renders the model's own chat template and generates on a
:class:`~slmops.runtimes.base.Runtime` (so perplexity can also use its logits);
:class:`HttpTarget` posts to ``{url}/chat/completions`` of any OpenAI-compatible server (slmops
serve, Ollama, llama.cpp, Foundry Local, vLLM, a cloud API) through the shared client
(:mod:`slmops.client`: retries, auth, timeouts), streamed when time to first token matters. API
keys come from an environment variable named by the caller and are never recorded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from slmops.bench.facts import model_facts
from slmops.client import ClientError, OpenAIClient, Retry, chat_body, delta_text, normalize_base_url
from slmops.errors import ConfigError
from slmops.settings import api_key_from_env

if TYPE_CHECKING:
    from slmops.runtimes.base import Runtime
    from slmops.store.artifact import Artifact

log = logging.getLogger(__name__)


#: A failed request to a target (``status``: the HTTP status, None without an HTTP answer).
RequestFailed = ClientError


@dataclass
class Reply:
    """A finished answer with its timing; token counts are None when the target does not report them."""

    text: str
    latency_s: float
    ttft_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None


class Target(Protocol):
    kind: str
    label: str
    concurrency: int

    @property
    def runtime(self) -> Runtime | None: ...

    def chat(self, messages: Sequence[dict[str, Any]], *, max_tokens: int = 128, temperature: float = 0.0,
             stop: Sequence[str] = (), seed: int | None = None, stream: bool = False, ignore_eos: bool = False) -> Reply: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class LocalTarget:
    """A model on a local runtime; the chat template is the model's own."""

    kind = "local"
    concurrency = 1

    def __init__(self, runtime: Runtime, label: str, facts: dict[str, Any] | None = None) -> None:
        self._rt = runtime
        self.label = label
        self.facts = dict(facts or {})

    @property
    def runtime(self) -> Runtime:
        return self._rt

    def chat(self, messages: Sequence[dict[str, Any]], *, max_tokens: int = 128, temperature: float = 0.0,
             stop: Sequence[str] = (), seed: int | None = None, stream: bool = False, ignore_eos: bool = False) -> Reply:
        from slmops.runtimes.base import GenerationParams

        t0 = time.perf_counter()
        prompt = self._rt.apply_chat_template(list(messages), add_generation_prompt=True)
        params = GenerationParams(max_tokens=max_tokens, temperature=temperature, stop=list(stop), seed=seed, ignore_eos=ignore_eos)
        res = self._rt.generate(prompt, params)
        return Reply(res.text, time.perf_counter() - t0, res.ttft_s, res.prompt_tokens, res.completion_tokens, res.finish_reason)

    def describe(self) -> dict[str, Any]:
        return {"kind": "local", "label": self.label, "runtime": self._rt.name, "load_s": self._rt.info.load_s, **self.facts}

    def close(self) -> None:
        self._rt.close()


class HttpTarget:
    """An OpenAI-compatible server at ``url`` (``…/v1``); ``model`` defaults to the first one it lists."""

    kind = "http"

    def __init__(self, url: str, model: str | None = None, *, api_key: str | None = None, timeout: float = 120.0,
                 concurrency: int = 4, retry: Retry | None = None) -> None:
        self.base_url = normalize_base_url(url)
        self.client = OpenAIClient(self.base_url, api_key=api_key, timeout_s=timeout, retry=retry, max_connections=max(1, concurrency),
                                   purpose="evaluating a server over HTTP")
        self._model = model
        self.concurrency = max(1, concurrency)
        self.label = model or self.base_url

    @property
    def runtime(self) -> None:
        return None

    @property
    def model(self) -> str:
        if self._model is None:
            models = self.models()
            if not models:
                raise ConfigError(f"{self.base_url} lists no models", fix="name one with --model-name")
            if len(models) > 1:
                log.info("%s serves %d models; using %s (choose with --model-name)", self.base_url, len(models), models[0])
            self._model = models[0]
            self.label = self._model
        return self._model

    def models(self) -> list[str]:
        return self.client.models()

    def payload(self, messages: Sequence[dict[str, Any]], *, max_tokens: int, temperature: float = 0.0, stop: Sequence[str] = (),
                seed: int | None = None, stream: bool = False, ignore_eos: bool = False) -> dict[str, Any]:
        """The request body (:func:`slmops.client.chat_body` for this target's model)."""
        return chat_body(self.model, messages, max_tokens=max_tokens, temperature=temperature, stop=stop, seed=seed, stream=stream,
                         ignore_eos=ignore_eos)

    def chat(self, messages: Sequence[dict[str, Any]], *, max_tokens: int = 128, temperature: float = 0.0,
             stop: Sequence[str] = (), seed: int | None = None, stream: bool = False, ignore_eos: bool = False) -> Reply:
        body = self.payload(messages, max_tokens=max_tokens, temperature=temperature, stop=stop, seed=seed, stream=stream,
                            ignore_eos=ignore_eos)
        if stream:
            return self._stream(body)
        t0 = time.perf_counter()
        data = self.client.chat(body).body
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        return Reply(choice["message"].get("content") or "", time.perf_counter() - t0, None, usage.get("prompt_tokens"),
                     usage.get("completion_tokens"), choice.get("finish_reason"))

    def _stream(self, body: dict[str, Any]) -> Reply:
        t0 = time.perf_counter()
        ttft: float | None = None
        parts: list[str] = []
        usage: dict[str, Any] = {}
        finish = None
        for chunk in self.client.stream(body):
            usage = chunk.get("usage") or usage
            if text := delta_text(chunk):
                ttft = ttft if ttft is not None else time.perf_counter() - t0
                parts.append(text)
            finish = next((c["finish_reason"] for c in chunk.get("choices") or [] if c.get("finish_reason")), finish)
        return Reply("".join(parts), time.perf_counter() - t0, ttft, usage.get("prompt_tokens"), usage.get("completion_tokens"), finish)

    def describe(self) -> dict[str, Any]:
        model = self.model  # resolves the name (and the label) first
        return {"kind": "http", "label": self.label, "url": self.base_url, "model": model}

    def close(self) -> None:
        self.client.close()


def open_target(
    model: Artifact | None = None,
    *,
    url: str | None = None,
    model_name: str | None = None,
    api_key_env: str | None = None,
    runtime: str = "auto",
    timeout: float = 120.0,
    concurrency: int = 4,
    label: str | None = None,
) -> Target:
    """A :class:`LocalTarget` for a model artifact, or an :class:`HttpTarget` for ``url`` (exactly one of them)."""
    if (model is None) == (url is None):
        raise ConfigError("give a model or --url, not both" if model is not None else "nothing to evaluate",
                          fix="pass a registry reference (bot, bot@prod, ./folder) or --url http://host:port/v1")
    if url is not None:
        return HttpTarget(url, model_name, api_key=api_key_from_env(api_key_env), timeout=timeout, concurrency=concurrency)
    from slmops.runtimes import open_runtime

    assert model is not None
    rt = open_runtime(model, runtime=runtime)
    return LocalTarget(rt, label or f"sha256:{model.short}", model_facts(model))
