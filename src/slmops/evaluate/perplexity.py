"""Perplexity on a local runtime: exp of the mean negative log-likelihood per scored token.

For a chat/instruction record the scored tokens are the reference answer's, conditioned on the
prompt rendered with the model's chat template (conditional perplexity); for a text record they are
all tokens after the first. Sequences longer than the context are scored with a sliding window
(stride half the context, each token scored once with as much left context as fits), as in the
Hugging Face perplexity guide. The corpus value is token-weighted: ``exp(Σ NLL / Σ tokens)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slmops.errors import ConfigError

if TYPE_CHECKING:
    from slmops.data.records import Record
    from slmops.runtimes.base import Runtime


@dataclass
class NLL:
    """Summed negative log-likelihood (nats) over ``tokens`` scored tokens."""

    total: float = 0.0
    tokens: int = 0

    def __add__(self, other: NLL) -> NLL:
        return NLL(self.total + other.total, self.tokens + other.tokens)

    @property
    def perplexity(self) -> float | None:
        return math.exp(self.total / self.tokens) if self.tokens else None


def log_softmax_rows(logits: Any) -> Any:
    """Row-wise log-softmax of a [n, vocab] float array (numerically stable)."""
    import numpy as np

    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def score_tokens(runtime: Runtime, ids: Sequence[int], first_scored: int, *, window: int | None = None) -> NLL:
    """NLL of ``ids[first_scored:]`` given what precedes each token, in windows of at most ``window`` tokens."""
    if not runtime.capabilities.logits:
        raise ConfigError(f"the {runtime.name} runtime returns no logits", why="perplexity needs each position's next-token distribution",
                          fix="evaluate the model on a runtime that returns logits, or drop --metrics perplexity")
    ids = [int(t) for t in ids]
    first_scored = max(1, first_scored)
    if first_scored >= len(ids):
        return NLL()
    window = min(window or runtime.context_length, runtime.context_length)
    if window < 2:
        raise ConfigError("the perplexity window must be at least 2 tokens")
    stride = max(1, window // 2)
    result = NLL()
    scored_until = first_scored  # tokens before this index are context only (or already scored)
    end = min(len(ids), max(window, first_scored + 1))
    while True:
        start = max(0, end - window)
        chunk = ids[start:end]
        logp = log_softmax_rows(runtime.sequence_logits(chunk))
        # row r predicts chunk[r + 1] = ids[start + r + 1]
        for pos in range(max(scored_until, start + 1), end):
            result.total -= float(logp[pos - start - 1, ids[pos]])
            result.tokens += 1
        scored_until = end
        if end >= len(ids):
            return result
        end = min(len(ids), end + stride)


def record_nll(runtime: Runtime, record: Record, *, window: int | None = None) -> NLL | None:
    """The record's NLL: the reference answer given the prompt, or a text record's whole text; None when it has neither."""
    if record.kind == "text":
        ids = runtime.tokenize(record.text or "", add_special_tokens=True)
        return score_tokens(runtime, ids, 1, window=window)
    answer = record.completion
    if answer is None:
        return None
    prompt = runtime.apply_chat_template([m.model_dump(exclude_none=True) for m in record.prompt_messages], add_generation_prompt=True)
    prompt_ids = runtime.encode_prompt(prompt)
    answer_ids = runtime.tokenize(answer, add_special_tokens=False)
    return score_tokens(runtime, prompt_ids + answer_ids, len(prompt_ids), window=window)


def perplexity(runtime: Runtime, records: Sequence[Record], *, window: int | None = None) -> tuple[float | None, list[NLL | None]]:
    """Corpus perplexity over ``records`` and each record's :class:`NLL` (None where nothing could be scored)."""
    per = [record_nll(runtime, r, window=window) for r in records]
    total = NLL()
    for n in per:
        if n is not None:
            total = total + n
    return total.perplexity, per
