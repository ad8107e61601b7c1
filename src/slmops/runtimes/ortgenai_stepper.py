"""One sequence's forward passes on ORT GenAI (the runtime's :class:`~slmops.runtimes.base.Stepper`), with an engine-greedy fast path.

:func:`slmops.runtimes.base.decode_loop` asks a stepper for the logits after the prompt and after
each chosen token. :class:`OgStepper` gets them from ``og.Generator.get_logits`` — or, for plain
greedy requests (:func:`engine_can_choose`), lets the engine pick the token itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from slmops.runtimes.base import GenerationParams


def engine_can_choose(params: GenerationParams) -> bool:
    """True when the next token is plain greedy argmax, so ORT GenAI may pick it itself (no logits copied to Python)."""
    return (
        params.temperature == 0
        and not params.logprobs
        and params.top_logprobs == 0
        and params.repetition_penalty in (None, 1.0)
        and params.presence_penalty == 0
        and params.frequency_penalty == 0
    )


class OgStepper:
    """One sequence on an ``og.Generator`` (the :class:`~slmops.runtimes.base.Stepper` for ORT GenAI).

    In ``greedy`` mode the engine picks each token itself (``generate_next_token``, its own argmax)
    and the stepper hands :func:`decode_loop` a one-hot row for it, which the greedy sampler picks
    again: the same tokens, without copying a vocabulary-sized row to numpy per token. When the
    engine picks an EOS it does not add it to the sequence (it considers the sequence done), so with
    ``ignore_eos`` the stepper appends it with ``append_tokens`` and lets the engine go on picking.
    """

    def __init__(self, rt: Any, adapter: str | None, *, greedy: bool = False) -> None:
        self.rt = rt
        self.adapter = adapter
        self.greedy = greedy
        self.gen: Any = None

    def _last(self) -> np.ndarray:
        logits = self.gen.get_logits()
        return np.array(logits.reshape(-1, logits.shape[-1])[-1], dtype=np.float32)

    def _engine_pick(self) -> np.ndarray:
        self.gen.generate_next_token()
        tok = int(self.gen.get_next_tokens()[0])
        row = np.zeros(tok + 1, dtype=np.float32)
        row[tok] = 1.0
        return row

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        self.gen = self.rt._generator(self.adapter, greedy=self.greedy)
        self.gen.append_tokens(np.asarray(ids, dtype=np.int32))
        return self._engine_pick() if self.greedy else self._last()

    def step(self, token_id: int) -> np.ndarray:
        if self.greedy:
            if self.gen.is_done():  # the engine chose EOS and did not add it: add it, and go on
                self.gen.append_tokens(np.asarray([token_id], dtype=np.int32))
            return self._engine_pick()  # otherwise the engine already holds token_id (its own pick)
        self.gen.append_tokens(np.asarray([token_id], dtype=np.int32))
        return self._last()
