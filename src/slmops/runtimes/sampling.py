"""Choosing the next token from logits, in numpy, with the same semantics for every runtime.

Order of operations (as in transformers and vLLM): penalties on the raw logits (HF-style
``repetition_penalty`` over prompt and output, OpenAI-style ``presence``/``frequency`` over the
output), then greedy argmax when ``temperature == 0``; otherwise divide by the temperature, keep
the ``top_k`` best, keep the smallest set whose probability reaches ``top_p``, and draw with a
seeded :class:`numpy.random.Generator` (fresh entropy when ``seed`` is None). Reported logprobs
are those of the raw model distribution (log-softmax of the unprocessed logits).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from slmops.runtimes.base import GenerationParams


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis, in float64."""
    x = np.asarray(logits, dtype=np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    z = x - m
    return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def top_logprobs(logprobs: np.ndarray, n: int) -> tuple[tuple[int, float], ...]:
    """The ``n`` most likely (token id, logprob) pairs, best first."""
    if n <= 0:
        return ()
    n = min(n, logprobs.shape[-1])
    idx = np.argpartition(-logprobs, n - 1)[:n]
    idx = idx[np.argsort(-logprobs[idx], kind="stable")]
    return tuple((int(i), float(logprobs[i])) for i in idx)


def apply_penalties(
    logits: np.ndarray,
    *,
    prompt_ids: Sequence[int] = (),
    output_ids: Sequence[int] = (),
    repetition_penalty: float | None = None,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
) -> np.ndarray:
    """Penalised copy of ``logits`` (float64); unchanged values when no penalty is set."""
    x = np.array(logits, dtype=np.float64)
    vocab = x.shape[-1]
    if repetition_penalty is not None and repetition_penalty != 1.0:
        seen = np.unique(np.asarray([*prompt_ids, *output_ids], dtype=np.int64))
        seen = seen[(seen >= 0) & (seen < vocab)]
        if seen.size:
            v = x[seen]
            with np.errstate(over="ignore"):  # an extreme penalty pushes a logit to ±inf: excluded or certain, as asked
                x[seen] = np.where(v > 0, v / repetition_penalty, v * repetition_penalty)
    if (presence_penalty or frequency_penalty) and len(output_ids):
        counts = np.bincount(np.asarray(output_ids, dtype=np.int64), minlength=vocab)[:vocab]
        x -= frequency_penalty * counts + presence_penalty * (counts > 0)
    return x


def probabilities(logits: np.ndarray, *, temperature: float, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """The sampling distribution after temperature, top-k and top-p (float64, sums to 1)."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0 for sampling; 0 means greedy")
    raw = np.asarray(logits, dtype=np.float64)
    with np.errstate(over="ignore"):
        z = raw / temperature
    if np.max(z) == np.inf:  # a temperature so small that logits overflow: the limit puts all mass on the best token(s)
        z = np.where(raw == np.max(raw), 0.0, -np.inf)
    vocab = z.shape[-1]
    if 0 < top_k < vocab:
        kth = np.partition(z, vocab - top_k)[vocab - top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - np.max(z))
    p /= p.sum()
    if top_p < 1.0:
        order = _nucleus_order(p, top_p)
        cum = np.cumsum(p[order])
        keep = int(np.searchsorted(cum, top_p)) + 1
        mask = np.zeros(vocab, dtype=bool)
        mask[order[:keep]] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return p


_NUCLEUS_CANDIDATES = 256


def _nucleus_order(p: np.ndarray, top_p: float) -> np.ndarray:
    """The most likely tokens, best first (ties by id), enough of them to reach ``top_p``.

    Sorting the whole vocabulary costs milliseconds per token; the nucleus nearly always lies in a
    few hundred candidates, found with ``argpartition``. The shortcut is taken only when its answer
    is the full sort's: the candidates reach ``top_p`` and every token left out is strictly less
    likely than the last one kept (so ties at the cut cannot change the set).
    """
    vocab = p.shape[-1]
    m = _NUCLEUS_CANDIDATES
    if vocab > 4 * m:
        cand = np.argpartition(-p, m - 1)[:m]
        cand = cand[np.lexsort((cand, -p[cand]))]
        cum = np.cumsum(p[cand])
        keep = int(np.searchsorted(cum, top_p)) + 1
        if keep < m and p[cand[keep - 1]] > p[cand[-1]]:
            return cand[:keep]
    return np.argsort(-p, kind="stable")


class Sampler:
    """Picks token ids from logits according to :class:`GenerationParams`; one per generation."""

    def __init__(self, params: GenerationParams) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    @property
    def greedy(self) -> bool:
        return self.params.temperature == 0

    def __call__(self, logits: np.ndarray, *, prompt_ids: Sequence[int] = (), output_ids: Sequence[int] = ()) -> int:
        p = self.params
        penalised = (p.repetition_penalty not in (None, 1.0)) or bool(p.presence_penalty or p.frequency_penalty)
        if self.greedy and not penalised:
            return int(np.argmax(logits))  # float32 → float64 is exact: the same argmax, without a copy
        x = apply_penalties(
            logits,
            prompt_ids=prompt_ids,
            output_ids=output_ids,
            repetition_penalty=p.repetition_penalty,
            presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty,
        )
        if self.greedy:
            return int(np.argmax(x))
        probs = probabilities(x, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p)
        cdf = np.cumsum(probs)
        u = self.rng.random() * cdf[-1]
        return int(min(np.searchsorted(cdf, u, side="right"), probs.shape[-1] - 1))
