"""Duplicate removal: exact (normalised text) and near duplicates (MinHash + LSH, verified).

A record's content is all of its text (``role: content`` lines, or ``text``), normalised: Unicode
NFKC, lower case, runs of whitespace collapsed to one space. ``id``, ``label`` and ``meta`` are not
content. The first occurrence is kept; a later record is removed when its content equals a kept
one (exact), or when its shingle set's Jaccard similarity with a kept one is at least
``threshold`` (near). Near-duplicate candidates come from MinHash signatures banded for LSH; every
candidate pair is then checked with the true Jaccard similarity, so LSH only decides which pairs
get compared, never what is removed.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from slmops.data.records import Record
from slmops.errors import ConfigError

log = logging.getLogger(__name__)

_WS = re.compile(r"\s+")
_PRIME = np.uint64((1 << 61) - 1)
_MASK32 = np.uint64(0xFFFFFFFF)
_CHUNK = 4096  # shingles per block when hashing (bounds memory at num_perm x _CHUNK)
Shingle = Literal["char", "word"]


def normalize_text(text: str) -> str:
    """NFKC, lower case, whitespace collapsed and trimmed."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def record_key(record: Record) -> str:
    """The normalised content of ``record`` (what exact deduplication compares)."""
    return normalize_text(record.content_text())


def shingles(text: str, *, unit: Shingle = "char", n: int = 5) -> set[int]:
    """32-bit hashes (crc32) of the ``n``-gram shingles of (already normalised) ``text``.

    A text shorter than one shingle is a single shingle; an empty text has none.
    """
    if unit == "word":
        tokens: Sequence[str] = text.split()
        grams = [" ".join(tokens[i : i + n]) for i in range(max(1, len(tokens) - n + 1))] if tokens else []
    else:
        grams = [text[i : i + n] for i in range(max(1, len(text) - n + 1))] if text else []
    return {zlib.crc32(g.encode("utf-8")) for g in grams}


def jaccard(a: set[int], b: set[int]) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


class MinHasher:
    """``num_perm`` universal hashes ``(a*x + b) mod (2^61 - 1)`` over 32-bit shingle hashes."""

    def __init__(self, num_perm: int = 128, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.num_perm = num_perm
        self.a = rng.integers(1, 1 << 32, size=(num_perm, 1), dtype=np.uint64)
        self.b = rng.integers(0, 1 << 32, size=(num_perm, 1), dtype=np.uint64)

    def signature(self, hashes: set[int]) -> np.ndarray:
        sig = np.full(self.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        values = np.fromiter(hashes, dtype=np.uint64, count=len(hashes))
        for start in range(0, len(values), _CHUNK):
            block = values[None, start : start + _CHUNK]
            h = ((self.a * block + self.b) % _PRIME) & _MASK32  # a, x < 2^32: no uint64 overflow
            np.minimum(sig, h.min(axis=1), out=sig)
        return sig


def lsh_params(threshold: float, num_perm: int, *, fn_weight: float = 0.95) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm minimising weighted false positives/negatives.

    False negatives weigh more: candidates are verified with the true Jaccard similarity, so a
    false positive costs one comparison while a false negative keeps a duplicate.
    """
    s = np.linspace(0.0, 1.0, 501)
    best, best_cost = (1, num_perm), math.inf
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        p = 1.0 - (1.0 - s**rows) ** bands  # probability a pair with similarity s becomes a candidate
        fp = _integrate(np.where(s < threshold, p, 0.0), s)
        fn = _integrate(np.where(s >= threshold, 1.0 - p, 0.0), s)
        cost = (1 - fn_weight) * fp + fn_weight * fn
        if cost < best_cost:
            best, best_cost = (bands, rows), cost
    return best


def _integrate(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


@dataclass(frozen=True)
class Removed:
    """One removed record: its position in the input and the kept record it duplicates."""

    index: int
    duplicate_of: int
    reason: Literal["exact", "near"]
    similarity: float
    id: str | None = None
    duplicate_of_id: str | None = None
    label_conflict: bool = False
    preview: str = ""


@dataclass
class DedupResult:
    records: list[Record]
    removed: list[Removed] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        exact = sum(1 for r in self.removed if r.reason == "exact")
        return {"input": len(self.records) + len(self.removed), "kept": len(self.records),
                "removed_exact": exact, "removed_near": len(self.removed) - exact}

    def report(self) -> dict[str, Any]:
        """A JSON-able report (what ``dedup_report.json`` holds)."""
        return {"counts": self.counts, "settings": self.settings, "removed": [asdict(r) for r in self.removed]}


def dedup_records(
    records: Sequence[Record],
    *,
    exact: bool = True,
    near: bool = True,
    threshold: float = 0.85,
    num_perm: int = 128,
    shingle: Shingle = "char",
    ngram: int = 5,
    seed: int = 0,
) -> DedupResult:
    """Remove exact and/or near duplicates, keeping first occurrences (see the module docstring)."""
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"--threshold {threshold} is out of range", fix="use a Jaccard similarity in (0, 1], e.g. 0.85")
    if num_perm < 2:
        raise ConfigError(f"--num-perm {num_perm} is too small", fix="use at least 16 (128 is the default)")
    if ngram < 1:
        raise ConfigError(f"--ngram {ngram} must be at least 1")
    keys = [record_key(r) for r in records]
    removed: dict[int, tuple[int, str, float]] = {}
    if exact:
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            digest = hashlib.sha256(key.encode()).hexdigest()
            if digest in first:
                removed[i] = (first[digest], "exact", 1.0)
            else:
                first[digest] = i
    settings: dict[str, Any] = {"exact": exact, "near": near}
    if near:
        bands, rows = lsh_params(threshold, num_perm)
        settings.update(threshold=threshold, num_perm=num_perm, shingle=shingle, ngram=ngram, seed=seed, bands=bands, rows=rows)
        _near(keys, removed, threshold=threshold, hasher=MinHasher(num_perm, seed), bands=bands, rows=rows, unit=shingle, n=ngram)
    kept = [r for i, r in enumerate(records) if i not in removed]
    out = []
    for i in sorted(removed):
        j, reason, sim = removed[i]
        a, b = records[i], records[j]
        conflict = a.label is not None and b.label is not None and a.label != b.label
        out.append(Removed(i, j, reason, round(sim, 4), a.id, b.id, conflict, keys[i][:80]))  # type: ignore[arg-type]
    result = DedupResult(kept, out, settings)
    log.info("dedup: kept %d of %d (%s)", len(kept), len(records), result.counts)
    return result


def _near(
    keys: list[str], removed: dict[int, tuple[int, str, float]], *, threshold: float, hasher: MinHasher,
    bands: int, rows: int, unit: Shingle, n: int,
) -> None:
    """Mark near duplicates of earlier kept records in ``removed`` (mutated in place)."""
    buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
    sets: dict[int, set[int]] = {}
    for i, key in enumerate(keys):
        if i in removed:
            continue
        sh = shingles(key, unit=unit, n=n)
        if not sh:
            continue
        sig = hasher.signature(sh)
        band_keys = [sig[b * rows : (b + 1) * rows].tobytes() for b in range(bands)]
        candidates: set[int] = set()
        for b, bk in enumerate(band_keys):
            candidates.update(buckets[b].get(bk, ()))
        best, best_sim = -1, 0.0
        for j in sorted(candidates):
            sim = jaccard(sh, sets[j])
            if sim > best_sim:
                best, best_sim = j, sim
        if best >= 0 and best_sim >= threshold:
            removed[i] = (best, "near", best_sim)
            continue
        sets[i] = sh
        for b, bk in enumerate(band_keys):
            buckets[b].setdefault(bk, []).append(i)
