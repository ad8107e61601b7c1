"""Dataset statistics for ``slmops data inspect``: counts per kind, label and split, and lengths."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from slmops.data.records import Record


def _summary(values: list[int]) -> dict[str, float | int | None]:
    if not values:
        return {"min": None, "mean": None, "max": None}
    return {"min": min(values), "mean": round(sum(values) / len(values), 2), "max": max(values)}


def _stats(records: Sequence[Record]) -> dict[str, Any]:
    roles: Counter[str] = Counter()
    for r in records:
        roles.update(m.role for m in r.messages)
    labels = Counter("<none>" if r.label is None else str(r.label) for r in records)
    return {
        "records": len(records),
        "kinds": dict(sorted(Counter(r.kind for r in records).items())),
        "labels": dict(sorted(labels.items())) if any(r.label is not None for r in records) else {},
        "roles": dict(sorted(roles.items())),
        "messages": _summary([len(r.messages) for r in records if r.kind != "text"]),
        "chars": _summary([len(r.content_text()) for r in records]),
        "with_completion": sum(1 for r in records if r.completion is not None),
    }


def inspect_dataset(records: Sequence[Record] | Mapping[str, Sequence[Record]]) -> dict[str, Any]:
    """Statistics of a list of records, or of named splits (then also per split).

    ``messages`` counts turns per chat-form record; ``chars`` is the length of all of a record's
    text; ``roles`` counts messages per role; ``labels`` is empty when no record has a label.
    """
    if isinstance(records, Mapping):
        splits = {name: list(recs) for name, recs in records.items()}
        everything = [r for recs in splits.values() for r in recs]
        out = _stats(everything)
        out["splits"] = {name: _stats(recs) for name, recs in splits.items()}
        return out
    return _stats(list(records))
