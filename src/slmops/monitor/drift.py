"""Drift between training prompts and live traffic: population stability index and embedding shift.

PSI compares two distributions over the same bins: ``sum((a - e) * ln(a / e))``. By the usual
reading, below 0.1 is stable, 0.1–0.25 a moderate shift and above 0.25 a significant one. We
compute it for prompt lengths (in tokens; bins from the baseline's deciles) and for the token
distribution (the baseline's most frequent tokens plus an "other" bin). With an embedding
function, the cosine distance between the two embedding centroids is reported too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from slmops.errors import DataError

STABLE, SIGNIFICANT = 0.1, 0.25
_EPS = 1e-4


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """PSI of two histograms over the same bins (counts or shares; smoothed so no bin is zero)."""
    e = np.asarray(expected, dtype=float)
    a = np.asarray(actual, dtype=float)
    if e.shape != a.shape or e.ndim != 1 or len(e) < 2:
        raise ValueError("psi needs two histograms with the same number (≥ 2) of bins")
    e = np.clip(e / max(e.sum(), 1e-12), _EPS, None)
    a = np.clip(a / max(a.sum(), 1e-12), _EPS, None)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def length_psi(baseline: Sequence[int], live: Sequence[int], *, bins: int = 10) -> float:
    """PSI of prompt lengths, with bin edges at the baseline's quantiles.

    Small live samples get fewer bins (about 15 prompts per bin): with 30 prompts over 10 bins some
    bins are empty by chance, and PSI reads an empty bin as a large shift.
    """
    bins = max(2, min(bins, len(live) // 15))
    edges = np.unique(np.quantile(np.asarray(baseline, dtype=float), np.linspace(0, 1, bins + 1)[1:-1]))
    e = np.bincount(np.searchsorted(edges, baseline, side="right"), minlength=len(edges) + 1)
    a = np.bincount(np.searchsorted(edges, live, side="right"), minlength=len(edges) + 1)
    if len(e) < 2:  # every baseline length is the same: compare "equal" vs "different"
        same = float(baseline[0])
        e = np.array([len(baseline), 0])
        a = np.array([sum(x == same for x in live), sum(x != same for x in live)])
    return psi(e, a)


def token_psi(baseline: Sequence[Sequence[int]], live: Sequence[Sequence[int]], *, top: int = 30, min_count: int = 10) -> float:
    """PSI of token frequencies over the baseline's ``top`` tokens plus one bin for every other token.

    Only tokens seen at least ``min_count`` times in the baseline get a bin of their own: rare
    tokens (order numbers, names) would otherwise make two samples of the same traffic look apart;
    few bins keep PSI's small-sample bias (about bins/N) well under the 0.1 threshold.
    """
    base = Counter(t for seq in baseline for t in seq)
    vocab = [t for t, c in base.most_common(top) if c >= min_count]
    index = {t: i for i, t in enumerate(vocab)}

    def hist(seqs: Sequence[Sequence[int]]) -> np.ndarray:
        h = np.zeros(len(vocab) + 1)
        for seq in seqs:
            for t in seq:
                h[index.get(t, len(vocab))] += 1
        return h

    return psi(hist(baseline), hist(live))


def centroid_shift(baseline: np.ndarray, live: np.ndarray) -> float:
    """Cosine distance between the mean embeddings (0 = same direction)."""
    b, a = baseline.mean(axis=0), live.mean(axis=0)
    return float(1.0 - np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def verdict(score: float) -> str:
    return "stable" if score < STABLE else "moderate" if score < SIGNIFICANT else "significant"


@dataclass
class DriftReport:
    baseline_prompts: int
    live_prompts: int
    length_psi: float
    token_psi: float
    embedding_shift: float | None
    score: float
    verdict: str
    mean_length_baseline: float
    mean_length_live: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def drift_report(
    baseline: Sequence[str],
    live: Sequence[str],
    *,
    tokenize: Callable[[str], list[int]],
    embed: Callable[[list[str]], np.ndarray] | None = None,
    min_live: int = 20,
) -> DriftReport:
    """Compare live prompts with the baseline (training) prompts; the score is the larger PSI."""
    if not baseline:
        raise DataError("the baseline has no prompts", fix="pass the dataset the model was trained on (--baseline)")
    if len(live) < min_live:
        raise DataError(f"only {len(live)} live prompts in the window", why=f"drift needs at least {min_live} to mean anything",
                        fix="widen --window or wait for more traffic (content logging must be on: serve --log-content)")
    btok = [tokenize(t) for t in baseline]
    ltok = [tokenize(t) for t in live]
    lp = length_psi([len(t) for t in btok], [len(t) for t in ltok])
    tp = token_psi(btok, ltok)
    shift = centroid_shift(embed(list(baseline)), embed(list(live))) if embed else None
    score = max(lp, tp)
    return DriftReport(len(baseline), len(live), lp, tp, shift, score, verdict(score),
                       float(np.mean([len(t) for t in btok])), float(np.mean([len(t) for t in ltok])))
