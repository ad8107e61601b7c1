"""Deterministic train/validation/test splits, optionally stratified on a label.

The order of records is fixed by a seeded hash of each record's content, so the same records and
seed always give the same split whatever order they came in. Split sizes follow the ratios by
largest remainder (every split with a ratio above zero gets at least one record when there are
enough). With ``stratify_by``, each label (stratum) is shared out in proportion too, while the
split totals still match the ratios; a label with fewer records than there are splits goes to
the largest-ratio splits first (train), and is listed in ``SplitResult.warnings``.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from slmops.data.records import Record
from slmops.errors import ConfigError

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
DEFAULT_RATIOS = {"train": 0.8, "validation": 0.1, "test": 0.1}
MISSING = "<none>"


@dataclass
class SplitResult:
    """The split records (in their shuffled order), counts per split, and per label when stratified."""

    splits: dict[str, list[Record]]
    counts: dict[str, int]
    by_label: dict[str, dict[str, int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def check_ratios(ratios: Mapping[str, float] | Sequence[float]) -> dict[str, float]:
    """Validate split ratios (a mapping over train/validation/test, or three numbers)."""
    if not isinstance(ratios, Mapping):
        values = list(ratios)
        if len(values) != len(SPLITS):
            raise ConfigError(f"expected {len(SPLITS)} ratios (train, validation, test), got {len(values)}")
        ratios = dict(zip(SPLITS, values, strict=True))
    unknown = sorted(set(ratios) - set(SPLITS))
    if unknown:
        raise ConfigError(f"unknown split(s): {', '.join(unknown)}", fix=f"splits are {', '.join(SPLITS)}")
    out = {name: float(ratios.get(name, 0.0)) for name in SPLITS}
    for name, r in out.items():
        if not math.isfinite(r) or r < 0 or r > 1:
            raise ConfigError(f"--{name} {r} is not a valid ratio", fix="use a number between 0 and 1")
    total = sum(out.values())
    if abs(total - 1.0) > 1e-6:
        shown = " + ".join(f"{out[n]:g}" for n in SPLITS)
        raise ConfigError(f"split ratios add up to {total:g}, not 1 ({shown})", fix="make --train, --validation and --test sum to 1")
    if out["train"] <= 0:
        raise ConfigError("--train must be above 0", fix="give the training split a share, e.g. --train 0.8")
    return out


def label_of(record: Record, key: str) -> str:
    """The stratum of ``record``: its ``label`` (key ``label``) or ``meta[key]``; ``<none>`` if unset."""
    value: Any = record.label if key == "label" else record.meta.get(key.removeprefix("meta."))
    return MISSING if value is None else str(value)


def _order_key(record: Record, seed: int) -> str:
    return hashlib.sha256(f"{seed}\0{record.to_json()}".encode()).hexdigest()


def _allocate(n: int, ratios: dict[str, float], *, at_least_one: bool) -> dict[str, int]:
    """Largest-remainder counts for ``n`` items; ties go to the earlier split."""
    exact = {k: n * r for k, r in ratios.items()}
    counts = {k: math.floor(v) for k, v in exact.items()}
    for k in sorted(ratios, key=lambda k: (-(exact[k] - counts[k]), SPLITS.index(k)))[: n - sum(counts.values())]:
        counts[k] += 1
    if at_least_one:
        for k in SPLITS:
            if ratios[k] > 0 and counts[k] == 0:
                donor = max(SPLITS, key=lambda d: (counts[d], -SPLITS.index(d)))
                if counts[donor] > 1:
                    counts[donor] -= 1
                    counts[k] += 1
    return counts


def split_records(
    records: Sequence[Record],
    *,
    ratios: Mapping[str, float] | Sequence[float] = DEFAULT_RATIOS,
    seed: int = 0,
    stratify_by: str | None = None,
) -> SplitResult:
    """Split ``records`` into train/validation/test deterministically (see the module docstring)."""
    r = check_ratios(ratios)
    keys = {id(rec): _order_key(rec, seed) for rec in records}
    ordered = sorted(records, key=lambda rec: keys[id(rec)])
    totals = _allocate(len(ordered), r, at_least_one=True)
    if not stratify_by:
        splits, start = {}, 0
        for name in SPLITS:
            splits[name] = ordered[start : start + totals[name]]
            start += totals[name]
        return SplitResult(splits, dict(totals))

    strata: dict[str, list[Record]] = defaultdict(list)
    for rec in ordered:
        strata[label_of(rec, stratify_by)].append(rec)
    per = _stratified_counts({s: len(v) for s, v in strata.items()}, r, totals)
    splits = {name: [] for name in SPLITS}
    by_label: dict[str, dict[str, int]] = {}
    warnings: list[str] = []
    sparse: list[str] = []
    for s in sorted(strata):
        start = 0
        for name in SPLITS:
            splits[name].extend(strata[s][start : start + per[s][name]])
            start += per[s][name]
        by_label[s] = dict(per[s])
        missing = [n for n in SPLITS if r[n] > 0 and per[s][n] == 0]
        if missing:
            sparse.append(f"{s!r} ({len(strata[s])} record(s); none in {', '.join(missing)})")
    # keep each split in the seeded order rather than grouped by label
    for name in SPLITS:
        splits[name].sort(key=lambda rec: keys[id(rec)])
    if sparse:
        shown = ", ".join(sparse[:5]) + (f" and {len(sparse) - 5} more" if len(sparse) > 5 else "")
        warnings.append(f"{len(sparse)} {stratify_by} value(s) have too few records for every split: {shown}")
    if MISSING in strata:
        warnings.append(f"{len(strata[MISSING])} record(s) have no {stratify_by}; they form their own group")
    for w in warnings:
        log.warning("split: %s", w)
    counts = {name: len(v) for name, v in splits.items()}
    return SplitResult(splits, counts, by_label, warnings)


def _stratified_counts(sizes: dict[str, int], ratios: dict[str, float], totals: dict[str, int]) -> dict[str, dict[str, int]]:
    """Per-stratum split counts: floors of the proportional shares, then the leftovers given out
    by largest fractional part under the constraint that split totals match ``totals``."""
    per = {s: {k: math.floor(n * ratios[k]) for k in SPLITS} for s, n in sizes.items()}
    deficit = {k: totals[k] - sum(per[s][k] for s in per) for k in SPLITS}
    left = {s: n - sum(per[s].values()) for s, n in sizes.items()}
    candidates = sorted(
        ((s, k) for s in sizes for k in SPLITS if ratios[k] > 0),
        key=lambda sk: (-(sizes[sk[0]] * ratios[sk[1]] - per[sk[0]][sk[1]]), SPLITS.index(sk[1]), sk[0]),
    )
    for s, k in candidates:
        if left[s] > 0 and deficit[k] > 0 and sizes[s] * ratios[k] - per[s][k] > 0:
            per[s][k] += 1
            left[s] -= 1
            deficit[k] -= 1
    # whatever is left (the totals' constraint blocked a preferred split) goes where room remains
    for s in sorted(sizes):
        while left[s] > 0:
            k = max((k for k in SPLITS if deficit[k] > 0), key=lambda k: (deficit[k], -SPLITS.index(k)), default="train")
            per[s][k] += 1
            left[s] -= 1
            deficit[k] -= 1
    return per


def split_counts(result: SplitResult) -> dict[str, Any]:
    """Counts for reports and manifests: per split, and per label when stratified."""
    out: dict[str, Any] = dict(result.counts)
    if result.by_label:
        out["by_label"] = result.by_label
        out["labels"] = {s: sum(c.values()) for s, c in result.by_label.items()}
    return out
