from __future__ import annotations

from collections import Counter

import pytest

from slmops.data.records import parse_record
from slmops.data.split import check_ratios, split_records
from slmops.errors import ConfigError


def _recs(n: int, labels: list[str] | None = None) -> list:
    return [parse_record({"text": f"record number {i}", **({"label": labels[i]} if labels else {})}) for i in range(n)]


def test_default_ratios_and_disjoint_cover() -> None:
    recs = _recs(100)
    res = split_records(recs)
    assert res.counts == {"train": 80, "validation": 10, "test": 10}
    texts = [r.text for part in res.splits.values() for r in part]
    assert sorted(texts) == sorted(r.text for r in recs)


def test_deterministic_for_seed_and_independent_of_input_order() -> None:
    recs = _recs(50)
    a = split_records(recs, seed=3)
    b = split_records(list(reversed(recs)), seed=3)
    c = split_records(recs, seed=4)
    assert a.splits == b.splits
    assert a.splits["test"] != c.splits["test"]
    assert a.counts == c.counts


def test_custom_ratios_and_rounding() -> None:
    res = split_records(_recs(7), ratios=(0.5, 0.25, 0.25))
    assert sum(res.counts.values()) == 7 and all(v >= 1 for v in res.counts.values())
    res = split_records(_recs(10), ratios={"train": 0.9, "validation": 0.1, "test": 0.0})
    assert res.counts == {"train": 9, "validation": 1, "test": 0}
    small = split_records(_recs(3))
    assert small.counts == {"train": 1, "validation": 1, "test": 1}


@pytest.mark.parametrize("ratios", [(0.8, 0.1, 0.2), (0.5, 0.5), {"train": 0.9, "dev": 0.1}, (1.2, -0.1, -0.1), (0.0, 0.5, 0.5)])
def test_bad_ratios(ratios) -> None:
    with pytest.raises(ConfigError):
        check_ratios(ratios)


def test_stratified_keeps_label_proportions() -> None:
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    res = split_records(_recs(100, labels), stratify_by="label", seed=1)
    assert res.counts == {"train": 80, "validation": 10, "test": 10}
    assert res.by_label == {
        "a": {"train": 48, "validation": 6, "test": 6},
        "b": {"train": 24, "validation": 3, "test": 3},
        "c": {"train": 8, "validation": 1, "test": 1},
    }
    for name, part in res.splits.items():
        assert Counter(r.label for r in part) == Counter({k: v[name] for k, v in res.by_label.items() if v[name]})
    assert res.warnings == []


def test_rare_labels_go_to_train_first_and_are_reported() -> None:
    labels = ["common"] * 40 + ["rare"] * 1 + ["pair"] * 2
    res = split_records(_recs(43, labels), stratify_by="label")
    assert res.by_label["rare"] == {"train": 1, "validation": 0, "test": 0}
    assert sum(res.by_label["pair"].values()) == 2 and res.by_label["pair"]["train"] >= 1
    assert sum(res.counts.values()) == 43
    assert res.warnings and "'rare'" in res.warnings[0]


def test_stratify_on_meta_key_and_missing_values() -> None:
    recs = [parse_record({"text": f"t{i}", "meta": {"topic": "x" if i % 2 else "y"}}) for i in range(20)]
    recs.append(parse_record({"text": "no topic"}))
    res = split_records(recs, stratify_by="topic")
    assert set(res.by_label) == {"x", "y", "<none>"}
    assert any("have no topic" in w for w in res.warnings)
