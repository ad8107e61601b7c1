"""Synthetic prompts of a chosen length for benchmarks and validation (deterministic, plain English words)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slmops.runtimes.base import Runtime

_WORDS = ["the", "small", "model", "answers", "questions", "about", "orders", "refunds", "and", "shipping", "for", "customers", "in", "many", "cities", "while", "the", "team", "measures", "how", "fast", "each", "token", "arrives", "and", "how", "much", "memory", "the", "process", "uses", "over", "a", "long", "run", "of", "requests"]


def filler_text(n_words: int, offset: int = 0) -> str:
    """``n_words`` common English words (about one token each for most BPE tokenizers)."""
    return " ".join(_WORDS[(offset + i) % len(_WORDS)] for i in range(max(0, n_words)))


def prompt_ids(runtime: Runtime, n_tokens: int) -> list[int]:
    """Exactly ``n_tokens`` token ids of filler text (the first being the runtime's BOS when it adds one)."""
    words = max(8, n_tokens)
    while True:
        ids = runtime.tokenize(filler_text(words), add_special_tokens=True)
        if len(ids) >= n_tokens:
            return ids[:n_tokens]
        words *= 2
