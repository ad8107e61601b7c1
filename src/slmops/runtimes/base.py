"""The runtime protocol every engine implements, its request/response types, and the shared decode loop.

A :class:`Runtime` loads a model artifact and can tokenize, render the model's chat template,
generate or stream tokens for a request, and return next-token / whole-sequence logits (for
perplexity, KL divergence and parity checks). Engines differ only in how they run a forward step,
so the loop that samples, detokenizes, applies stop strings and decides the finish reason lives
here (:func:`decode_loop`) and is shared: a runtime supplies a :class:`Stepper`.

Nothing heavy is imported here; numpy comes in with the sampling helpers when a loop runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from slmops.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

FinishReason = Literal["stop", "length"]
Prompt = str | Sequence[int]


class PromptTooLong(ConfigError):
    """The prompt leaves no room to generate inside the model's context window."""


class GenerationParams(BaseModel):
    """How to generate: length, sampling, stops and penalties (OpenAI-compatible meanings)."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(default=256, ge=1, le=2**31 - 1, description="Most new tokens to generate (finish_reason 'length' when reached)")
    temperature: float = Field(default=0.0, ge=0.0, le=10.0, description="Sampling temperature; 0 means greedy")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling: smallest set of tokens reaching this probability")
    top_k: int = Field(default=0, ge=0, le=2**31 - 1, description="Keep only the k most likely tokens; 0 keeps all")
    seed: int | None = Field(default=None, ge=0, le=2**64 - 1, description="Seed for sampling (0 to 2^64-1); the same seed gives the same tokens")
    stop: list[str] = Field(default_factory=list, description="Strings that end generation; they never appear in the output")
    stop_token_ids: list[int] = Field(default_factory=list, description="Extra token ids that end generation (besides EOS)")
    ignore_eos: bool = Field(default=False, description="Keep generating past EOS (for benchmarks)")
    repetition_penalty: float | None = Field(default=None, gt=0.0, description="HF-style penalty on tokens already seen; 1 = off")
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0, description="OpenAI presence penalty over generated tokens")
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0, description="OpenAI frequency penalty over generated tokens")
    logprobs: bool = Field(default=False, description="Report the logprob of each generated token")
    top_logprobs: int = Field(default=0, ge=0, le=20, description="Also report this many most likely alternatives per token")

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, v: Any) -> Any:
        if v is None:
            return []
        if isinstance(v, str):
            return [v]
        return v

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, v: list[str]) -> list[str]:
        if any(s == "" for s in v):
            raise ValueError("stop strings must not be empty")
        return v


@dataclass(frozen=True)
class TokenEvent:
    """One generated token as it streams: its text delta (may be empty while text is held back)."""

    text: str
    token_id: int
    index: int
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] | None = None
    finish_reason: FinishReason | None = None


@dataclass
class GenerationResult:
    """A finished generation. ``token_ids`` include the token that ended it (EOS or a stop string's)."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    logprobs: list[float] | None = None
    top_logprobs: list[tuple[tuple[int, float], ...]] | None = None
    ttft_s: float | None = None
    total_s: float | None = None

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class Capabilities:
    """What a runtime supports, declared by the engine so callers (server, bench, evaluate, parity) read it, never names.

    ``register_runtime`` declares what the engine can do at most; an opened runtime's
    ``capabilities`` say what this model can (an ONNX export without LoRA inputs takes no adapters).
    """

    adapters: bool = False  # load_adapter/unload_adapter work, and a request may name an adapter
    adapter_formats: tuple[str, ...] = ()  # the adapter formats load_adapter takes ("peft", "gguf-lora", "onnx-adapter")
    batching: bool = False  # batcher() gives continuous batching over several requests
    logprobs: bool = True  # TokenEvent.logprob / top_logprobs are reported
    logits: bool = True  # next_token_logits / sequence_logits work (perplexity, KL, parity)
    streaming: bool = True
    prompt_encoding: bool = True  # encode_prompt applies the model's own BOS rule (without doubling a template's BOS)
    devices: tuple[str, ...] = ("cpu",)


class Batcher(Protocol):
    """Continuous batching over one runtime (``runtime.batcher(slots)``, when ``capabilities.batching``)."""

    stats: Any  # counters the server exports as metrics (llama.cpp's BatchStats), or None

    @property
    def context_length(self) -> int:
        """Tokens one request may use (prompt + completion): a slot's share where slots share one cache."""
        ...

    def stream(self, prompt: Prompt, params: GenerationParams | None = None, *, adapter: str | None = None) -> Iterator[TokenEvent]: ...

    def forget_adapter(self, name: str) -> None:
        """Before an adapter is unloaded: end or fail what uses it."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Runtime(Protocol):
    """One loaded model on one engine. Open it with :func:`slmops.runtimes.open_runtime`.

    ``adapter`` (on ``stream``, ``generate`` and the logits) names an adapter loaded with
    :meth:`load_adapter`; ``None`` is the model as opened. What works is in ``capabilities``.
    """

    name: str
    capabilities: Capabilities
    info: LoadInfo

    @property
    def context_length(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def eos_token_ids(self) -> frozenset[int]: ...

    @property
    def adapters(self) -> tuple[str, ...]:
        """Names of the adapters loaded at run time (``load_adapter``)."""
        ...

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def detokenize(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...

    def apply_chat_template(self, messages: Sequence[Any], add_generation_prompt: bool = True, **extra: Any) -> str: ...

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt as generation sees them: text with special tokens, a template's BOS not doubled."""
        ...

    def generate(self, prompt: Prompt, params: GenerationParams | None = None, *, adapter: str | None = None) -> GenerationResult: ...

    def stream(self, prompt: Prompt, params: GenerationParams | None = None, *, adapter: str | None = None) -> Iterator[TokenEvent]: ...

    def next_token_logits(self, ids: Sequence[int], *, adapter: str | None = None) -> np.ndarray: ...

    def sequence_logits(self, ids: Sequence[int], *, adapter: str | None = None) -> np.ndarray: ...

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load an adapter (one of ``capabilities.adapter_formats``) under ``name``; ConfigError when the model takes none."""
        ...

    def unload_adapter(self, name: str) -> bool: ...

    def batcher(self, slots: int, *, threads: int | None = None) -> Batcher:
        """Continuous batching of up to ``slots`` requests; ConfigError unless ``capabilities.batching``."""
        ...

    def close(self) -> None: ...


class Stepper(Protocol):
    """An engine's forward pass for one sequence with a KV cache: the prompt, then one token at a time."""

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        """Run the prompt; return the logits for the next token ([vocab], float32)."""
        ...

    def step(self, token_id: int) -> np.ndarray:
        """Append one token; return the logits for the next one."""
        ...


def drop_double_bos(ids: list[int], bos_token_id: int | None) -> list[int]:
    """A prompt rendered by a chat template already starts with BOS; tokenizing it again adds another."""
    if bos_token_id is not None and len(ids) >= 2 and ids[0] == bos_token_id and ids[1] == bos_token_id:
        return ids[1:]
    return ids


def check_prompt(ids: Sequence[int], *, context_length: int, vocab_size: int | None = None) -> None:
    """Refuse an empty prompt, one that fills the context, or ids the model has no embedding for."""
    if len(ids) == 0:
        raise ConfigError("the prompt is empty", fix="give at least one token (a BOS token will do)")
    if len(ids) >= context_length:
        raise PromptTooLong(
            f"the prompt is {len(ids)} tokens, and the model's context is {context_length}",
            why="there is no room left to generate",
            fix="shorten the prompt",
        )
    if vocab_size is not None:
        check_vocab(ids, vocab_size)


def check_vocab(ids: Sequence[int], vocab_size: int) -> None:
    """Refuse token ids the model has no embedding for."""
    bad = [t for t in ids if t < 0 or t >= vocab_size]
    if bad:
        raise ConfigError(
            f"token id {bad[0]} is outside the model's vocabulary of {vocab_size}",
            why="the tokenizer and the model's embedding disagree (a tokenizer may add tokens the model never saw)",
            fix="resize the embedding or use the tokenizer the model was trained with",
        )


class TokenDecoder:
    """The per-token half of :func:`decode_loop`: logits in, one :class:`TokenEvent` out.

    Sampling, logprobs, detokenisation, stop strings and the finish reason live here, so a loop
    that drives many sequences itself (the llama.cpp batcher) gives each sequence exactly what
    :func:`decode_loop` would. ``done`` turns true with the event that carries a finish reason.
    """

    def __init__(
        self,
        prompt_ids: Sequence[int],
        params: GenerationParams,
        *,
        decode: Callable[[Sequence[int]], str],
        eos_token_ids: frozenset[int] | set[int],
        context_length: int,
        timings: list[float] | None = None,
    ) -> None:
        from slmops.runtimes.sampling import Sampler
        from slmops.runtimes.stops import TextStream

        self.prompt = list(prompt_ids)
        self.params = params
        self.budget = min(params.max_tokens, context_length - len(self.prompt))
        self.sampler = Sampler(params)
        self.stream = TextStream(decode, stops=params.stop, prompt_ids=self.prompt)
        self.enders = set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos_token_ids))
        self.want_lp = params.logprobs or params.top_logprobs > 0
        self.output: list[int] = []
        self.done = False
        self.timings = timings  # when given: [seconds sampling, seconds detokenising and stopping], added to per token

    def __call__(self, logits: np.ndarray) -> TokenEvent:
        from slmops.runtimes.sampling import log_softmax, top_logprobs

        i = len(self.output)
        t0 = time.perf_counter() if self.timings is not None else 0.0
        tok = self.sampler(logits, prompt_ids=self.prompt, output_ids=self.output)
        self.output.append(tok)
        lp: float | None = None
        tops: tuple[tuple[int, float], ...] | None = None
        if self.want_lp:
            lps = log_softmax(logits)
            lp = float(lps[tok])
            tops = top_logprobs(lps, self.params.top_logprobs) if self.params.top_logprobs else None
        finish: FinishReason | None = None
        stream = self.stream
        t1 = time.perf_counter() if self.timings is not None else 0.0
        if tok in self.enders:
            text, finish = stream.finish(), "stop"
        else:
            text = stream.push(tok)
            if stream.stopped:
                finish = "stop"
            elif i >= self.budget - 1:
                text += stream.finish()
                finish = "stop" if stream.stopped else "length"
        self.done = finish is not None
        if self.timings is not None:
            self.timings[0] += t1 - t0
            self.timings[1] += time.perf_counter() - t1
        return TokenEvent(text=text, token_id=tok, index=i, logprob=lp, top_logprobs=tops, finish_reason=finish)


def decode_loop(
    stepper: Stepper,
    prompt_ids: Sequence[int],
    params: GenerationParams,
    *,
    decode: Callable[[Sequence[int]], str],
    eos_token_ids: frozenset[int] | set[int],
    context_length: int,
) -> Iterator[TokenEvent]:
    """Sample, detokenize and stop: one :class:`TokenEvent` per generated token, the last with a finish reason.

    Generation ends at EOS (or a ``stop_token_ids`` token; their text is never emitted), when a stop
    string completes (the text is cut where it starts), or after ``max_tokens`` / at the end of the
    context window (``"length"``). The per-token work is :class:`TokenDecoder`'s.
    """
    dec = TokenDecoder(prompt_ids, params, decode=decode, eos_token_ids=eos_token_ids, context_length=context_length)
    if dec.budget <= 0:
        return
    logits = stepper.prefill(dec.prompt)
    while True:
        ev = dec(logits)
        yield ev
        if dec.done:
            return
        logits = stepper.step(ev.token_id)


def collect(
    events: Iterator[TokenEvent], *, prompt_tokens: int, params: GenerationParams, started: float | None = None
) -> GenerationResult:
    """Gather a stream of events into a :class:`GenerationResult` (with time to first token)."""
    t0 = time.perf_counter() if started is None else started
    parts: list[str] = []
    ids: list[int] = []
    lps: list[float] = []
    tops: list[tuple[tuple[int, float], ...]] = []
    ttft: float | None = None
    finish: FinishReason = "length"
    for ev in events:
        if ttft is None:
            ttft = time.perf_counter() - t0
        parts.append(ev.text)
        ids.append(ev.token_id)
        if ev.logprob is not None:
            lps.append(ev.logprob)
        if ev.top_logprobs is not None:
            tops.append(ev.top_logprobs)
        if ev.finish_reason is not None:
            finish = ev.finish_reason
    return GenerationResult(
        text="".join(parts),
        token_ids=ids,
        finish_reason=finish,
        prompt_tokens=prompt_tokens,
        logprobs=lps if (params.logprobs or params.top_logprobs) else None,
        top_logprobs=tops if params.top_logprobs else None,
        ttft_s=ttft,
        total_s=time.perf_counter() - t0,
    )


@dataclass
class LoadInfo:
    """Facts about a loaded model (where it came from, how long loading took) for bench and serve."""

    source: str | None = None
    format: str | None = None
    load_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
