"""Unit tests of the runtime-independent helpers: incremental detokenisation, stop strings, sampling."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from slmops.runtimes.base import GenerationParams
from slmops.runtimes.sampling import Sampler, apply_penalties, log_softmax, probabilities, top_logprobs
from slmops.runtimes.stops import IncrementalDetokenizer, StopMatcher, TextStream

MULTIBYTE = "héllo 中文 🙂🚀 naïve café — Ünïcödé ß"


def byte_decoder() -> Any:
    """A 'tokenizer' whose tokens are single UTF-8 bytes: the hardest case for streaming."""

    def decode(ids: Sequence[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    return decode


def stream_all(decode: Any, ids: Sequence[int], stops: Sequence[str] = (), prompt: Sequence[int] = ()) -> tuple[list[str], TextStream]:
    ts = TextStream(decode, stops=stops, prompt_ids=prompt)
    deltas = []
    for t in ids:
        deltas.append(ts.push(t))
        if ts.stopped:
            break
    if not ts.stopped:
        deltas.append(ts.finish())
    return deltas, ts


# --------------------------------------------------------------------------- detokenisation


def test_byte_tokens_never_emit_half_characters() -> None:
    ids = list(MULTIBYTE.encode())
    deltas, _ = stream_all(byte_decoder(), ids)
    assert "".join(deltas) == MULTIBYTE
    assert all("\ufffd" not in d for d in deltas)
    assert "🙂" in deltas  # the 4-byte emoji comes out whole, in one delta


def test_truncated_character_flushes_as_replacement() -> None:
    ids = list("ok 🙂".encode())[:-2]
    det = IncrementalDetokenizer(byte_decoder())
    out = "".join(det.push(t) for t in ids)
    assert out == "ok "
    assert det.flush() == "\ufffd"
    assert det.flush() == ""


def test_real_bpe_tokenizer_streams_multibyte_text(tiny_tokenizer: Any) -> None:
    def decode(ids: Sequence[int]) -> str:
        return tiny_tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

    prompt = tiny_tokenizer.encode("the fox says", add_special_tokens=False)
    ids = tiny_tokenizer.encode(" " + MULTIBYTE + " the end", add_special_tokens=False)
    deltas, _ = stream_all(decode, ids, prompt=prompt)
    assert "".join(deltas) == " " + MULTIBYTE + " the end"
    assert all("\ufffd" not in d for d in deltas)


def test_special_tokens_are_skipped(tiny_tokenizer: Any) -> None:
    def decode(ids: Sequence[int]) -> str:
        return tiny_tokenizer.decode(list(ids), skip_special_tokens=True)

    ids = tiny_tokenizer.encode(f"the dog{tiny_tokenizer.eos_token} ok", add_special_tokens=False)
    assert tiny_tokenizer.eos_token_id in ids
    deltas, _ = stream_all(decode, ids)
    assert "".join(deltas) == "the dog ok"


# --------------------------------------------------------------------------- stop strings


@pytest.mark.parametrize(
    ("text", "stops", "expected"),
    [
        ("hello world. bye", ["."], "hello world"),
        ("hello world. bye", ["world", "hello"], ""),
        ("abc<|END|>def", ["<|END|>"], "abc"),
        ("aaab", ["aab"], "a"),  # overlapping prefixes
        ("no stop here", ["zz"], "no stop here"),
        ("café 🙂 done", ["🙂"], "café "),
        ("中文字符测试", ["字符"], "中文"),
        ("ends with a partial <|EN", ["<|END|>"], "ends with a partial <|EN"),
    ],
)
def test_stop_strings_cut_and_never_leak(text: str, stops: list[str], expected: str) -> None:
    # byte by byte through the detokenizer
    deltas, ts = stream_all(byte_decoder(), list(text.encode()), stops=stops)
    assert "".join(deltas) == expected
    assert ts.stopped == (expected != text)
    # text chunks of several sizes straight into the matcher
    for size in (1, 2, 3, 7, 100):
        m = StopMatcher(stops)
        out = ""
        for i in range(0, len(text), size):
            out += m.push(text[i : i + size])
            assert not any(s in out for s in stops)
            assert expected.startswith(out)  # never emits something it must take back
        out += m.flush()
        assert out == expected, size


def test_stop_matcher_holds_back_possible_prefix() -> None:
    m = StopMatcher(["###"])
    assert m.push("answer #") == "answer "
    assert m.push("#") == ""
    assert m.push(" not a stop") == "## not a stop"
    assert m.push("…###tail") == "…"
    assert m.stopped and m.matched == "###"
    assert m.push("more") == "" and m.flush() == ""


def test_stop_matcher_earliest_stop_wins_and_flush() -> None:
    m = StopMatcher(["bc", "abcd"])
    assert m.push("xab") == "x"
    assert m.push("cd") == ""  # both complete in this push: the one that starts first wins
    assert m.matched == "abcd"
    m1 = StopMatcher(["bc", "abcd"])
    assert m1.push("xabc") == "xa"  # "bc" completed first; generation stops before "abcd" could
    assert m1.matched == "bc"
    m2 = StopMatcher(["END"])
    assert m2.push("the EN") == "the "
    assert m2.flush() == "EN"


# --------------------------------------------------------------------------- sampling


def test_greedy_is_argmax_and_ignores_seed() -> None:
    logits = np.array([0.1, 2.0, 1.9, -1.0], dtype=np.float32)
    for seed in (None, 1, 2):
        assert Sampler(GenerationParams(temperature=0, seed=seed))(logits) == 1


def test_seeded_sampling_is_reproducible_and_seeds_differ() -> None:
    logits = np.random.default_rng(0).normal(size=50).astype(np.float32)

    def draw(seed: int) -> list[int]:
        s = Sampler(GenerationParams(temperature=1.0, seed=seed))
        return [s(logits) for _ in range(40)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_top_k_and_top_p_restrict_support() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    p = probabilities(logits, temperature=1.0, top_k=2)
    assert np.count_nonzero(p) == 2 and p[0] > p[1] > 0 and np.isclose(p.sum(), 1)
    p = probabilities(logits, temperature=1.0, top_p=0.79)
    assert list(np.nonzero(p)[0]) == [0, 1]
    p = probabilities(logits, temperature=1.0, top_p=0.81)
    assert list(np.nonzero(p)[0]) == [0, 1, 2]
    p = probabilities(logits, temperature=1.0, top_p=0.1)
    assert list(np.nonzero(p)[0]) == [0]
    s = Sampler(GenerationParams(temperature=1.0, top_k=2, seed=0))
    assert {s(logits) for _ in range(200)} == {0, 1}
    with pytest.raises(ValueError):
        probabilities(logits, temperature=0)


def test_low_temperature_approaches_greedy_and_penalties() -> None:
    logits = np.array([1.0, 1.2, 0.5])
    s = Sampler(GenerationParams(temperature=0.01, seed=3))
    assert {s(logits) for _ in range(50)} == {1}
    rep = apply_penalties(logits, prompt_ids=[1], repetition_penalty=2.0)
    assert np.allclose(rep, [1.0, 0.6, 0.5])
    neg = apply_penalties(np.array([-1.0, 1.0]), output_ids=[0], repetition_penalty=2.0)
    assert np.allclose(neg, [-2.0, 1.0])
    pf = apply_penalties(logits, output_ids=[1, 1, 2], presence_penalty=0.5, frequency_penalty=0.1)
    assert np.allclose(pf, [1.0, 1.2 - 0.5 - 0.2, 0.5 - 0.5 - 0.1])
    assert Sampler(GenerationParams(repetition_penalty=10.0))(logits, output_ids=[1]) == 0


def test_logprob_helpers() -> None:
    logits = np.array([1.0, 3.0, 2.0], dtype=np.float32)
    lp = log_softmax(logits)
    assert np.isclose(np.exp(lp).sum(), 1.0)
    assert top_logprobs(lp, 2) == ((1, float(lp[1])), (2, float(lp[2])))
    assert top_logprobs(lp, 0) == ()


def test_generation_params_validation() -> None:
    assert GenerationParams(stop="###").stop == ["###"]
    assert GenerationParams(stop=None).stop == []
    with pytest.raises(ValueError):
        GenerationParams(stop=[""])
    with pytest.raises(ValueError):
        GenerationParams(temperature=-1)
    with pytest.raises(ValueError):
        GenerationParams(max_tokens=0)
    with pytest.raises(ValueError):
        GenerationParams(unknown=1)


def test_extreme_temperature_and_penalty_stay_finite_without_warnings() -> None:
    import warnings

    logits = np.array([1.0, 3.0, 2.0, -1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow RuntimeWarning leaks to the server log
        p = probabilities(logits, temperature=1e-310)
        assert p.tolist() == [0.0, 1.0, 0.0, 0.0]  # the limit of a vanishing temperature is the argmax
        x = apply_penalties(logits, prompt_ids=[1, 3], repetition_penalty=1e308)
        assert x[3] == -np.inf or x[3] < -1e300  # a seen negative logit is pushed out, not NaN
        q = probabilities(x, temperature=0.7)
    assert np.isfinite(q).all() and q.sum() == pytest.approx(1.0) and q[3] == 0.0 and np.argmax(q) == 2
