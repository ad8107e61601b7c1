"""Every text and JSON metric against hand-computed examples (and sacreBLEU / rouge-score where installed)."""

from __future__ import annotations

import math

import pytest

from slmops.errors import ConfigError
from slmops.evaluate import jsonmetrics as jm
from slmops.evaluate import metrics as tm


def test_normalize_and_exact_match() -> None:
    assert tm.normalize_answer("The  Cat, sat!") == "cat sat"
    assert tm.exact_match("The answer.", "answer") == 1.0
    assert tm.exact_match("answers", "answer") == 0.0
    assert tm.exact_match("", "") == 1.0


def test_token_f1_by_hand() -> None:
    # "cat sat on mat" vs "cat sat on hat": 3 common of 4 and 4 -> P = R = 3/4
    assert tm.token_f1("the cat sat on the mat", "a cat sat on a hat") == pytest.approx(0.75)
    # bags: pred {cat:2, dog:1}, ref {cat:1, dog:2, bird:1}: overlap 2; P = 2/3, R = 2/4 -> F1 = 4/7
    assert tm.token_f1("cat cat dog", "cat dog dog bird") == pytest.approx(4 / 7)
    assert tm.token_f1("x", "y") == 0.0
    assert tm.token_f1("the", "a") == 1.0  # both empty after normalisation


def test_rouge_l_by_hand() -> None:
    # LCS(police killed the gunman, police kill the gunman) = 3 -> P = R = 3/4
    assert tm.rouge_l("police killed the gunman", "police kill the gunman") == pytest.approx(0.75)
    # LCS = "the gunman" = 2 of 4 and 4
    assert tm.rouge_l("the gunman kill police", "police kill the gunman") == pytest.approx(0.5)
    # LCS = a c e = 3; P = 3/5, R = 3/3 -> 2*0.6/1.6
    assert tm.rouge_l("a b c d e", "a c e") == pytest.approx(0.75)
    assert tm.rouge_l("", "a") == 0.0
    assert tm.lcs_length(list("ABCBDAB"), list("BDCABA")) == 4


@pytest.mark.slow  # importing rouge-score (nltk) alone takes ~4 s
def test_rouge_l_matches_rouge_score_when_installed() -> None:
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    pairs = [("The quick brown fox jumps", "the fox jumped over the quick dog"), ("Order #123 shipped to Oslo!", "order 123 to oslo")]
    for pred, ref in pairs:
        assert tm.rouge_l(pred, ref) == pytest.approx(scorer.score(ref, pred)["rougeL"].fmeasure)


def test_bleu_by_hand() -> None:
    assert tm.corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    # all n-gram precisions 1, brevity penalty exp(1 - 6/4)
    assert tm.corpus_bleu(["the cat sat on"], ["the cat sat on the mat"]) == pytest.approx(math.exp(-0.5))
    # p1 = 3/4, p2 = 1/3, p3 = 0/2 -> 1/(2*2), p4 = 0/1 -> 1/(4*1) ('exp' smoothing); BP exp(-0.5)
    assert tm.corpus_bleu(["the cat the cat"], ["the cat sat on the mat"]) == pytest.approx(math.exp(-0.5) * (1 / 64) ** 0.25)
    # corpus statistics are summed before scoring: precisions 1, BP exp(1 - 12/10)
    preds, refs = ["the cat sat on", "the cat sat on the mat"], ["the cat sat on the mat"] * 2
    assert tm.corpus_bleu(preds, refs) == pytest.approx(math.exp(-0.2))
    # sentence BLEU uses the effective order: "the cat" has no 3-grams -> 2 orders, precisions 1, BP exp(1 - 3/2)
    assert tm.sentence_bleu("the cat", "the cat sat") == pytest.approx(math.exp(-0.5))
    assert tm.corpus_bleu(["xyz"], ["abc"]) == 0.0
    assert tm.tokenize_13a("Hello, world! It's 3.5-4 km.") == ["Hello", ",", "world", "!", "It's", "3.5", "-", "4", "km", "."]


def test_bleu_matches_sacrebleu_when_installed() -> None:
    sacrebleu = pytest.importorskip("sacrebleu")
    preds = ["The order #12 shipped, finally!", "Refund for the 3.5-inch laptop case", "cancel it", "where is my coffee maker?"]
    refs = ["Your order #12 has shipped.", "A refund for the 3.5-inch laptop case is on its way", "please cancel order 9", "Where is my coffee maker"]
    assert tm.corpus_bleu(preds, refs) == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score / 100, abs=1e-9)
    for p, r in zip(preds, refs, strict=True):
        assert tm.sentence_bleu(p, r) == pytest.approx(sacrebleu.sentence_bleu(p, [r]).score / 100, abs=1e-9)


def test_accuracy_on_labels() -> None:
    assert tm.accuracy(" Refund.", "refund") == 1.0
    assert tm.accuracy('"order_status"', "order_status") == 1.0
    assert tm.accuracy("refund please", "refund") == 0.0
    assert tm.accuracy("True", True) == 1.0
    assert tm.accuracy("7", 7) == 1.0
    assert tm.mean([]) is None and tm.mean([1.0, 0.0, 0.5]) == 0.5


def test_json_valid() -> None:
    assert jm.json_valid('{"a": 1}') == 1.0
    assert jm.json_valid('  ```json\n{"a": 1}\n```  ') == 1.0
    assert jm.json_valid("[1, 2]") == 1.0
    assert jm.json_valid('Sure: {"a": 1}') == 0.0
    assert jm.json_valid("42") == 0.0  # a bare scalar is not structured output
    assert jm.json_valid("{'a': 1}") == 0.0


SCHEMA = {
    "type": "object", "required": ["product", "quantity"], "additionalProperties": False,
    "properties": {"product": {"type": "string", "minLength": 2}, "quantity": {"type": "integer", "minimum": 1},
                   "city": {"type": "string", "enum": ["Oslo", "Lisbon"]}},
}


def test_json_schema_validation() -> None:
    assert jm.json_schema_valid('{"product": "lamp", "quantity": 2}', SCHEMA) == 1.0
    assert jm.json_schema_valid('{"product": "lamp", "quantity": 2.0, "city": "Oslo"}', SCHEMA) == 1.0
    assert jm.json_schema_valid('{"product": "lamp", "quantity": 0}', SCHEMA) == 0.0
    assert jm.json_schema_valid('{"product": "lamp"}', SCHEMA) == 0.0
    assert jm.json_schema_valid('{"product": "lamp", "quantity": true}', SCHEMA) == 0.0
    assert jm.json_schema_valid('{"product": "lamp", "quantity": 1, "x": 1}', SCHEMA) == 0.0
    assert jm.json_schema_valid('{"product": "lamp", "quantity": 1, "city": "Paris"}', SCHEMA) == 0.0
    assert jm.json_schema_valid("not json", SCHEMA) == 0.0
    errs = jm.schema_errors({"product": "x", "quantity": 0, "y": 1}, SCHEMA)
    assert errs == ["$.product: shorter than 2", "$.quantity: 0 breaks minimum 1", "$: unexpected property 'y'"]
    assert jm.schema_errors([1, "a"], {"type": "array", "items": {"type": "integer"}}) == ["$[1]: expected integer, got str"]
    lengths = {"minLength": 2, "maxLength": 3, "minItems": 2, "maxItems": 3}
    assert jm.schema_errors("abcd", lengths) == ["$: longer than 3"] and jm.schema_errors([1], lengths) == ["$: fewer than 2 items"]
    assert jm.schema_errors([1, 2, 3, 4], lengths) == ["$: more than 3 items"] and jm.schema_errors("ab", lengths) == []


def test_schema_keywords_outside_the_subset_are_refused() -> None:
    with pytest.raises(ConfigError, match="oneOf"):
        jm.check_schema({"type": "object", "oneOf": [{"type": "object"}]})
    with pytest.raises(ConfigError, match="properties.a"):
        jm.check_schema({"properties": {"a": {"type": "strnig"}}})
    jm.check_schema(SCHEMA)


def test_json_field_match_by_hand() -> None:
    ref = '{"product": "laptop", "quantity": 3, "city": "Oslo"}'
    # product matches (case and spaces ignored), quantity 3.0 == 3, city differs -> 2/3
    assert jm.json_field_match('{"product": "Laptop ", "quantity": 3.0, "city": "Lisbon"}', ref) == pytest.approx(2 / 3)
    assert jm.json_field_match('{"product": "laptop"}', ref) == pytest.approx(1 / 3)
    assert jm.json_field_match("laptop, 3, Oslo", ref) == 0.0
    assert jm.json_field_match('{"city": "oslo"}', ref, fields=["city"]) == 1.0
    # the schema's properties decide the fields: product, quantity and city -> 2/3; without city in the schema -> 1
    assert jm.json_field_match('{"product": "laptop", "quantity": 3}', ref, schema=SCHEMA) == pytest.approx(2 / 3)
    two = {"type": "object", "properties": {"product": {"type": "string"}, "quantity": {"type": "integer"}}}
    assert jm.json_field_match('{"product": "laptop", "quantity": 3}', ref, schema=two) == 1.0
    assert jm.json_field_match('{"a": 1}', "plain text reference") is None
