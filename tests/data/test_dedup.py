from __future__ import annotations

from slmops.data.dedup import dedup_records, jaccard, lsh_params, normalize_text, shingles
from slmops.data.records import parse_record

BASE = ("Customers can return any unused item within thirty days of delivery for a full refund. "
        "Refunds are issued to the original payment method within five business days after we receive the item.")
NEAR = ("Customers can return any unused item within thirty days of delivery for a full refund.  "
        "Refunds are issued to the original payment method within 5 business days after we receive the item!")
DISTINCT = [
    "The warehouse in Rotterdam ships orders placed before noon on the same day, and weekend orders leave on Monday.",
    "Our support line is open from eight in the morning until six in the evening, Monday through Friday.",
    "Gift cards cannot be exchanged for cash and expire two years after the date of purchase.",
    "Customers can return any unused item within thirty days of delivery for store credit only, never cash.",
]


def _t(text: str, **kw) -> object:
    return parse_record({"text": text, **kw})


def test_normalisation() -> None:
    assert normalize_text("  Hello\t\nWORLD  ") == "hello world"
    assert normalize_text("ﬁle") == "file"  # NFKC


def test_exact_duplicates_ignore_case_and_whitespace() -> None:
    recs = [_t("Hello   world", id="a"), _t("hello world", id="b"), _t("HELLO WORLD\n", id="c"), _t("hello there", id="d")]
    res = dedup_records(recs, near=False)
    assert [r.id for r in res.records] == ["a", "d"]
    assert [(x.index, x.duplicate_of, x.reason) for x in res.removed] == [(1, 0, "exact"), (2, 0, "exact")]
    assert res.removed[0].duplicate_of_id == "a"
    assert res.counts == {"input": 4, "kept": 2, "removed_exact": 2, "removed_near": 0}


def test_exact_dedup_covers_the_whole_record() -> None:
    a = parse_record({"input": "What is 2+2?", "output": "4"})
    b = parse_record({"input": "What is 2+2?", "output": "Four"})
    c = parse_record({"messages": [{"role": "user", "content": "what is 2+2?"}, {"role": "assistant", "content": "4"}], "label": "x"})
    res = dedup_records([a, b, c], near=False)
    assert res.records == [a, b] and res.removed[0].index == 2


def test_near_duplicates_removed_distinct_kept() -> None:
    recs = [_t(BASE, id="base"), _t(NEAR, id="near"), *(_t(d, id=f"d{i}") for i, d in enumerate(DISTINCT))]
    sim = jaccard(shingles(normalize_text(BASE)), shingles(normalize_text(NEAR)))
    assert sim >= 0.85
    res = dedup_records(recs)
    assert [r.id for r in res.records] == ["base", "d0", "d1", "d2", "d3"]
    (gone,) = res.removed
    assert gone.id == "near" and gone.duplicate_of_id == "base" and gone.reason == "near" and abs(gone.similarity - sim) < 1e-3
    # a stricter threshold keeps it; exact-only keeps it
    assert len(dedup_records(recs, threshold=0.99).records) == 6
    assert len(dedup_records(recs, near=False).records) == 6


def test_near_dedup_many_records_is_verified() -> None:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma"]
    import random

    rng = random.Random(0)
    texts = [" ".join(rng.choice(words) for _ in range(40)) for _ in range(300)]
    noisy = [t.replace(" ", "  ", 1) + "." for t in texts[:20]]  # near copies of the first 20
    recs = [_t(t) for t in texts + noisy]
    res = dedup_records(recs)
    assert res.counts["removed_exact"] == 0 and res.counts["removed_near"] == 20
    assert {x.duplicate_of for x in res.removed} == set(range(20))
    assert all(x.similarity >= 0.85 for x in res.removed)


def test_word_shingles_and_label_conflict() -> None:
    res = dedup_records([_t(BASE, label="pos"), _t(BASE + " Thanks", label="neg")], exact=True, shingle="word", ngram=3, threshold=0.8)
    assert res.counts["removed_near"] == 1 and res.removed[0].label_conflict


def test_lsh_params_favour_recall() -> None:
    bands, rows = lsh_params(0.85, 128)
    assert bands * rows <= 128
    assert 1 - (1 - 0.85**rows) ** bands > 0.9
