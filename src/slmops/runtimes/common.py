"""What every engine does the same way around its own forward passes: prompts, checks, generate, logits, lifetime.

:class:`EngineCommon` implements the engine-independent half of the
:class:`~slmops.runtimes.base.Runtime` protocol once, so the torch, ONNX Runtime GenAI and
llama.cpp runtimes differ only where the engines do. An engine class mixes it in and supplies:

* ``_check_open()`` — raise when the runtime has been closed;
* ``bos_token_id`` — the BOS token its tokenizer adds, or None;
* ``_stream(ids, params, adapter)`` — the decode loop over checked prompt ids, under its lock;
* ``_logits(ids, last_only, adapter)`` — logits of checked, in-range ids;
* the facts (``_context_length``, ``_vocab_size``, ``_eos``, or its own properties), ``tokenize`` and ``adapters``.

Everything here is plain Python: no engine library is imported.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Self

from slmops.errors import ConfigError
from slmops.runtimes.base import (
    Batcher,
    GenerationParams,
    GenerationResult,
    Prompt,
    PromptTooLong,
    TokenEvent,
    check_prompt,
    check_vocab,
    collect,
    drop_double_bos,
)

if TYPE_CHECKING:
    import numpy as np


class EngineCommon:
    """The shared half of a runtime (see the module docstring); engines inherit it and add their forward passes."""

    name: str
    adapters: tuple[str, ...]
    bos_token_id: int | None
    _context_length: int
    _vocab_size: int
    _eos: frozenset[int]

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._eos

    def _check_open(self) -> None:
        raise NotImplementedError

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        raise NotImplementedError

    def _stream(self, ids: list[int], params: GenerationParams, adapter: str | None) -> Iterator[TokenEvent]:
        raise NotImplementedError

    def _logits(self, ids: list[int], *, last_only: bool, adapter: str | None) -> np.ndarray:
        raise NotImplementedError

    # ------------------------------------------------------------------ prompts

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids for a prompt: text is tokenized with special tokens (without doubling a template's BOS)."""
        self._check_open()
        if isinstance(prompt, str):
            return drop_double_bos(self.tokenize(prompt, add_special_tokens=True), self.bos_token_id)
        return [int(t) for t in prompt]

    def _check_adapter(self, adapter: str | None) -> None:
        if adapter is not None and adapter not in self.adapters:
            raise ConfigError(
                f"no adapter named {adapter!r} is loaded on this model",
                fix=f"load it with load_adapter() first (loaded: {', '.join(self.adapters) or 'none'})",
            )

    def _prepare(self, prompt: Prompt, adapter: str | None) -> list[int]:
        ids = self.encode_prompt(prompt)
        check_prompt(ids, context_length=self.context_length, vocab_size=self.vocab_size)
        self._check_adapter(adapter)
        return ids

    # ------------------------------------------------------------------ generation

    def stream(self, prompt: Prompt, params: GenerationParams | None = None, *, adapter: str | None = None) -> Iterator[TokenEvent]:
        """Generate token by token (``adapter``: a loaded adapter's name); the last event carries the finish reason."""
        return self._stream(self._prepare(prompt, adapter), params or GenerationParams(), adapter)

    def generate(self, prompt: Prompt, params: GenerationParams | None = None, *, adapter: str | None = None) -> GenerationResult:
        """The whole generation at once, with its time to first token."""
        params = params or GenerationParams()
        t0 = time.perf_counter()
        ids = self._prepare(prompt, adapter)
        return collect(self._stream(ids, params, adapter), prompt_tokens=len(ids), params=params, started=t0)

    def batcher(self, slots: int, *, threads: int | None = None) -> Batcher:
        """Continuous batching; this engine has none (``capabilities.batching`` is False)."""
        raise ConfigError(f"the {self.name} runtime has no continuous batching", fix="run one request at a time")

    # ------------------------------------------------------------------ logits

    def _scored(self, ids: Sequence[int], adapter: str | None) -> list[int]:
        ids = [int(t) for t in ids]
        if not ids:
            raise ConfigError("cannot compute logits for an empty sequence")
        if len(ids) > self.context_length:
            raise PromptTooLong(
                f"the sequence is {len(ids)} tokens, and the model's context is {self.context_length}",
                fix="score shorter windows (or open the model with a larger context where the engine allows it)",
            )
        check_vocab(ids, self.vocab_size)
        self._check_adapter(adapter)
        return ids

    def next_token_logits(self, ids: Sequence[int], *, adapter: str | None = None) -> np.ndarray:
        """Logits for the token after ``ids``: float32 array of shape [vocab]."""
        return self._logits(self._scored(ids, adapter), last_only=True, adapter=adapter)

    def sequence_logits(self, ids: Sequence[int], *, adapter: str | None = None) -> np.ndarray:
        """Logits at every position of ``ids`` (row i predicts token i+1): float32 [len, vocab]."""
        return self._logits(self._scored(ids, adapter), last_only=False, adapter=adapter)

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
