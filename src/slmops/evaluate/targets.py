"""What is evaluated: a local runtime or any OpenAI-compatible server, behind one small interface.

A :class:`Target` answers a chat (``chat(messages, max_tokens=…) -> Reply``) and describes itself
for the report. :class:`LocalTarget` renders the model's own chat template and generates on a
:class:`~slmops.runtimes.base.Runtime` (so perplexity can also use its logits);
:class:`HttpTarget` posts to ``{url}/chat/completions`` of any OpenAI-compatible server (slmops
serve, Ollama, llama.cpp, Foundry Local, vLLM, a cloud API), streamed when time to first token
matters. API keys come from an environment variable named by the caller and are never recorded.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from slmops._optional import require
from slmops.errors import ConfigError, SlmopsError
from slmops.settings import api_key_from_env

if TYPE_CHECKING:
    from slmops.runtimes.base import Runtime
    from slmops.store.artifact import Artifact

log = logging.getLogger(__name__)


class RequestFailed(SlmopsError):
    """One request to a target failed; ``status`` is the HTTP status (None: no HTTP answer or a local error)."""

    def __init__(self, what: str, *, status: int | None = None, why: str | None = None, fix: str | None = None) -> None:
        self.status = status
        super().__init__(what, why=why, fix=fix)


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


def model_facts(artifact: Artifact) -> dict[str, Any]:
    """Parameters, size on disk, format and precision of a model artifact, from its manifest.

    An adapter is described as what runs: its base's facts, the size of base + adapter, and both digests.
    """
    if artifact.kind == "adapter":
        from slmops.runtimes.adapted import adapter_base

        base = adapter_base(artifact)
        facts = model_facts(base)
        return {**facts, "digest": artifact.digest, "artifact_kind": "adapter", "base": base.digest,
                "format": f"{facts['format']}+{artifact.manifest.format}",
                "size_bytes": (facts["size_bytes"] or 0) + (artifact.manifest.size_bytes or 0),
                "adapter_size_bytes": artifact.manifest.size_bytes}
    m = artifact.manifest
    meta = m.meta
    precision = next((str(meta[k]) for k in ("precision", "qtype", "quantization", "dtype", "torch_dtype") if meta.get(k)), None)
    if precision is None and (artifact.path / "config.json").is_file():
        try:
            cfg = json.loads((artifact.path / "config.json").read_text())
            precision = cfg.get("dtype") or cfg.get("torch_dtype")
        except (OSError, ValueError):
            precision = None
    return {
        "digest": m.digest, "format": m.format, "artifact_kind": m.kind, "size_bytes": m.size_bytes,
        "parameters": m.metrics.get("parameters") or meta.get("parameters"), "precision": precision or "unknown",
        "architecture": meta.get("architecture") or meta.get("arch"),
    }


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
        info = getattr(self._rt, "info", None)
        return {"kind": "local", "label": self.label, "runtime": self._rt.name,
                "load_s": getattr(info, "load_s", None), **self.facts}

    def close(self) -> None:
        self._rt.close()


def normalize_base_url(url: str) -> str:
    """``http://host:port`` → ``http://host:port/v1``; a full ``…/chat/completions`` URL is cut back to its base."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--url {url!r} is not an http(s) URL", fix="e.g. --url http://127.0.0.1:8000/v1")
    if parts.username or parts.password:
        raise ConfigError(
            "--url must not carry credentials", why="the URL is recorded in the report's manifest",
            fix="put the key in an environment variable and name it with --api-key-env",
        )
    path = parts.path.rstrip("/")
    for suffix in ("/chat/completions", "/completions", "/models"):
        path = path.removesuffix(suffix)
    if not path.endswith("/v1") and "/v1" not in path and "/openai" not in path:
        path += "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


JSON_HEADERS = {"Content-Type": "application/json"}


def encode_body(body: dict[str, Any]) -> bytes:
    """The request body as ASCII JSON: any text (even a lone surrogate, which has no UTF-8 form) travels as a \\u escape."""
    return json.dumps(body, ensure_ascii=True).encode("ascii")


def parse_sse_line(line: str) -> dict[str, Any] | str | None:
    """One server-sent-events line of an OpenAI stream: a chunk dict, ``"[DONE]"``, or None (comment, blank, other field)."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        return data
    try:
        chunk = json.loads(data)
    except ValueError:
        return None
    return chunk if isinstance(chunk, dict) else None


def error_detail(body: bytes | str) -> str:
    """The message of an OpenAI-style error body (``{"error": {"message": …}}``), else the body's start."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        err = json.loads(text).get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
    except (ValueError, AttributeError):
        pass
    return text[:200]


class HttpTarget:
    """An OpenAI-compatible server at ``url`` (``…/v1``); ``model`` defaults to the first one it lists."""

    kind = "http"

    def __init__(self, url: str, model: str | None = None, *, api_key: str | None = None, timeout: float = 120.0,
                 concurrency: int = 4) -> None:
        httpx = require("httpx", extra="eval", purpose="evaluating a server over HTTP")
        self.base_url = normalize_base_url(url)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)
        self._httpx = httpx
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

    def _request(self, method: str, path: str, **kw: Any) -> Any:
        for attempt in (1, 2):
            try:
                return self._client.request(method, path, **kw)
            except self._httpx.TimeoutException as exc:
                raise RequestFailed(f"{method} {self.base_url}{path} timed out", why=str(exc) or type(exc).__name__) from exc
            except self._httpx.TransportError as exc:
                # a server may close a kept-alive connection (e.g. after an error): one retry on a fresh one
                if attempt == 1:
                    continue
                raise RequestFailed(
                    f"cannot reach {self.base_url}", why=str(exc) or type(exc).__name__,
                    fix="check --url and that the server is running (slmops serve, ollama serve, llama-server …)",
                ) from exc
        raise AssertionError("unreachable")

    def models(self) -> list[str]:
        r = self._request("GET", "/models")
        if r.status_code != 200:
            raise RequestFailed(f"GET {self.base_url}/models answered {r.status_code}", status=r.status_code, why=error_detail(r.content),
                                fix="check --url and --api-key-env")
        return [str(m.get("id")) for m in r.json().get("data", []) if isinstance(m, dict)]

    def payload(self, messages: Sequence[dict[str, Any]], *, max_tokens: int, temperature: float = 0.0, stop: Sequence[str] = (),
                seed: int | None = None, stream: bool = False, ignore_eos: bool = False) -> dict[str, Any]:
        """The request body; ``ignore_eos`` is vLLM's (and slmops serve's) extension, sent only when asked for."""
        body: dict[str, Any] = {"model": self.model, "messages": list(messages), "max_tokens": max_tokens, "temperature": temperature}
        if ignore_eos:
            body["ignore_eos"] = True
        if stop:
            body["stop"] = list(stop)
        if seed is not None:
            body["seed"] = seed
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def chat(self, messages: Sequence[dict[str, Any]], *, max_tokens: int = 128, temperature: float = 0.0,
             stop: Sequence[str] = (), seed: int | None = None, stream: bool = False, ignore_eos: bool = False) -> Reply:
        body = self.payload(messages, max_tokens=max_tokens, temperature=temperature, stop=stop, seed=seed, stream=stream,
                            ignore_eos=ignore_eos)
        if stream:
            return self._stream(body)
        t0 = time.perf_counter()
        r = self._request("POST", "/chat/completions", content=encode_body(body), headers=JSON_HEADERS)
        latency = time.perf_counter() - t0
        if r.status_code != 200:
            raise RequestFailed(f"the server answered {r.status_code}", status=r.status_code, why=error_detail(r.content))
        try:
            data = r.json()
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise RequestFailed("the server's answer is not an OpenAI chat completion", status=r.status_code, why=r.text[:200]) from exc
        usage = data.get("usage") or {}
        return Reply(text, latency, None, usage.get("prompt_tokens"), usage.get("completion_tokens"), choice.get("finish_reason"))

    def _stream(self, body: dict[str, Any]) -> Reply:
        try:
            return self._stream_once(body)
        except RequestFailed as exc:
            if exc.status is not None or not isinstance(exc.__cause__, self._httpx.TransportError):
                raise
            return self._stream_once(body)  # a closed kept-alive connection: one retry on a fresh one

    def _stream_once(self, body: dict[str, Any]) -> Reply:
        t0 = time.perf_counter()
        ttft: float | None = None
        parts: list[str] = []
        usage: dict[str, Any] = {}
        finish = None
        try:
            with self._client.stream("POST", "/chat/completions", content=encode_body(body), headers=JSON_HEADERS) as r:
                if r.status_code != 200:
                    raise RequestFailed(f"the server answered {r.status_code}", status=r.status_code, why=error_detail(r.read()))
                for chunk in iter_chunks(r.iter_lines()):
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        delta = (choice.get("delta") or {}).get("content")
                        if delta:
                            ttft = ttft if ttft is not None else time.perf_counter() - t0
                            parts.append(delta)
                        finish = choice.get("finish_reason") or finish
        except self._httpx.HTTPError as exc:
            raise RequestFailed(f"streaming from {self.base_url} failed", why=str(exc) or type(exc).__name__) from exc
        return Reply("".join(parts), time.perf_counter() - t0, ttft, usage.get("prompt_tokens"), usage.get("completion_tokens"), finish)

    def describe(self) -> dict[str, Any]:
        model = self.model  # resolves the name (and the label) first
        return {"kind": "http", "label": self.label, "url": self.base_url, "model": model}

    def close(self) -> None:
        self._client.close()


def iter_chunks(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The chunk dicts of an OpenAI SSE stream, up to ``[DONE]``."""
    for line in lines:
        item = parse_sse_line(line)
        if item == "[DONE]":
            return
        if isinstance(item, dict):
            yield item


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
