"""Calibration windows: texts turned into fixed-length token windows for importance and perplexity.

The texts are a dataset's (``--calibration DATASET``) or, by default, the English prose of the
``dataset-build`` package (:mod:`slmops.data.prose`). :func:`token_chunks` cuts them into
non-overlapping windows in order, so the same texts and tokenizer always give the same windows:
the first ``n`` measure importance, the next ``m`` (disjoint) measure perplexity.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def token_chunks(tokenizer: Any, texts: Iterable[str], *, length: int, count: int) -> list[list[int]]:
    """Up to ``count`` windows of exactly ``length`` token ids from ``texts`` joined by blank lines."""
    chunks: list[list[int]] = []
    buf: list[int] = []
    sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    for text in texts:
        buf.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        buf.extend(sep)
        while len(buf) >= length and len(chunks) < count:
            chunks.append(buf[:length])
            buf = buf[length:]
        if len(chunks) >= count:
            break
    return chunks
