"""The OpenAI wire format: request schemas (pydantic), the error shape, and the response/chunk builders.

Requests accept the fields OpenAI documents (unknown ones are ignored, as OpenAI-compatible servers
do, so newer clients keep working); fields slmops cannot honour (tools, logit_bias, images) are
refused with a 400 that says so rather than silently ignored. Extensions used by other servers are
accepted too: ``top_k``, ``repetition_penalty``, ``ignore_eos`` (vLLM/llama.cpp).

Every error leaves as ``{"error": {"message", "type", "param", "code"}}`` through :class:`APIError`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# ---------------------------------------------------------------------------------------- errors


class APIError(Exception):
    """An error answered in OpenAI's shape with an HTTP status (and headers such as Retry-After)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}
        self.counted = False  # set once the request's metrics have recorded it

    @property
    def kind(self) -> str:
        """A short label for metrics (``errors_total{kind=…}``)."""
        return self.code or self.type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def not_found(model: str, known: list[str] | None = None) -> APIError:
    hint = f"; served models: {', '.join(known[:20])}" if known else "; list them with GET /v1/models"
    return APIError(404, f"the model {model!r} does not exist or is not served here{hint}", param="model", code="model_not_found")


# ---------------------------------------------------------------------------------------- requests


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


#: Largest integer a request may carry where the value reaches a runtime (seeds, token counts): 64 bits unsigned.
U64_MAX = 2**64 - 1
#: Largest token count a request may name (a context this long does not exist).
MAX_TOKENS = 2**31 - 1


def model_id(value: str, *, what: str = "model ids") -> str:
    """Refuse ids that only differ from a real one by invisible characters or that no registry can hold.

    ``"bot "`` and ``" bot"`` would otherwise be distinct ids (in metrics, the request log and the
    pool) for one model; a version past 64 bits cannot exist (and overflows SQLite).
    """
    if value != value.strip():
        raise ValueError(f"{what} must not begin or end with whitespace")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{what} must not contain control characters")
    name, sep, version = value.rpartition(":")
    if sep and name and name != "sha256" and "/" not in version and version.isdigit() and int(version) > 2**63 - 1:
        raise ValueError(f"version {version} is out of range (versions are 1 to {2**63 - 1})")
    return value


class StreamOptions(_Req):
    include_usage: bool = Field(False, description="Send a last chunk with token usage (its choices are empty)")


class ResponseFormat(_Req):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None


class ChatMessage(_Req):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's text; content parts other than text are refused."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_request(f"content parts of type {part.get('type')!r} are not supported; send text", param="messages")
            parts.append(part["text"])
        return "".join(parts)


class _Sampling(_Req):
    model: str = Field(min_length=1, max_length=512, description="A registry name, name:VERSION, name@ALIAS, sha256:PREFIX or adapter id")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, le=MAX_TOKENS, description="Extension: keep the k most likely tokens")
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    stop: str | list[str] | None = Field(None, description="Up to 16 stop strings")
    seed: int | None = Field(None, ge=0, le=U64_MAX, description="Sampling seed, 0 to 2^64-1 (choice i uses seed + i)")
    n: int = Field(1, ge=1, le=8)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0, description="Extension: HF-style repetition penalty")
    ignore_eos: bool = Field(False, description="Extension: keep generating past end-of-sequence (benchmarks)")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)
    logit_bias: dict[str, float] | None = None
    tools: list[dict[str, Any]] | None = None

    @field_validator("model")
    @classmethod
    def _model_id(cls, v: str) -> str:
        return model_id(v)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(description="Text, texts, token ids, or lists of token ids")
    max_tokens: int | None = Field(16, ge=1, le=MAX_TOKENS)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=8)


class LoadLoraRequest(_Req):
    lora_name: str = Field(min_length=1, max_length=128)
    lora_path: str = Field(
        min_length=1,
        description="A store reference (name, name:3, sha256:…), an adapter id (MODEL/NAME), a PEFT adapter folder, "
        "a GGUF LoRA (.gguf or an export.gguf_lora folder) or an .onnx_adapter file",
    )
    base_model: str | None = Field(None, description="Extension: the served model the adapter goes on (default: its recorded base)")

    @field_validator("lora_name", "base_model")
    @classmethod
    def _ids(cls, v: str | None) -> str | None:
        return v if v is None else model_id(v)


class UnloadLoraRequest(_Req):
    lora_name: str = Field(min_length=1, max_length=128)


# ---------------------------------------------------------------------------------------- responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat_logprobs(entries: list[tuple[str, float, list[tuple[str, float]]]]) -> dict[str, Any]:
    """Chat-style logprobs: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""

    def one(tok: str, lp: float) -> dict[str, Any]:
        return {"token": tok, "logprob": lp, "bytes": list(tok.encode("utf-8"))}

    return {"content": [{**one(t, lp), "top_logprobs": [one(a, b) for a, b in tops]} for t, lp, tops in entries], "refusal": None}


def completion_logprobs(entries: list[tuple[str, float, list[tuple[str, float]]]], offset: int = 0) -> dict[str, Any]:
    """Legacy completions logprobs: tokens, token_logprobs, top_logprobs (dicts) and text_offset."""
    offsets, pos = [], offset
    for tok, _, _ in entries:
        offsets.append(pos)
        pos += len(tok)
    return {
        "tokens": [t for t, _, _ in entries],
        "token_logprobs": [lp for _, lp, _ in entries],
        "top_logprobs": [dict(tops) for _, _, tops in entries],
        "text_offset": offsets,
    }


def model_card(model_id: str, *, created: int, owned_by: str = "slmops", **extra: Any) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by, **extra}
