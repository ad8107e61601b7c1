"""Drift math against hand-computed values and real tokenizers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from slmops.errors import DataError
from slmops.monitor.drift import centroid_shift, drift_report, length_psi, psi, token_psi, verdict


def test_psi_hand_computed() -> None:
    # shares 0.5/0.5 vs 0.25/0.75: (0.25-0.5)ln(0.5) + (0.75-0.5)ln(1.5)
    expected = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert psi([50, 50], [25, 75]) == pytest.approx(expected, rel=1e-3)
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        psi([1, 2], [1, 2, 3])


def test_length_and_token_psi_separate_same_from_shifted() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(5, 15, 500).tolist()
    assert length_psi(base, rng.integers(5, 15, 500).tolist()) < 0.1
    assert length_psi(base, rng.integers(30, 60, 500).tolist()) > 0.25
    seqs = [[1, 2, 3, 4]] * 50
    assert token_psi(seqs, seqs) == pytest.approx(0.0, abs=1e-9)
    assert token_psi(seqs, [[7, 8, 9]] * 50) > 0.25
    assert verdict(0.05) == "stable" and verdict(0.2) == "moderate" and verdict(1.0) == "significant"


def test_centroid_shift() -> None:
    a = np.array([[1.0, 0.0], [1.0, 0.1]])
    assert centroid_shift(a, a) == pytest.approx(0.0, abs=1e-9)
    assert centroid_shift(a, np.array([[0.0, 1.0]])) == pytest.approx(1 - 0.05 / math.hypot(1, 0.05), rel=1e-6)


def test_drift_report_on_real_text() -> None:
    from slmops.data.synth import generate_task

    def words(text: str) -> list[int]:
        return [hash(w) % 5000 for w in text.lower().split()]

    support = [r["messages"][1]["content"] for r in generate_task("support-intent", 400)["train"]]
    more_support = [r["messages"][1]["content"] for r in generate_task("support-intent", 200, seed=1)["train"]]
    math_prompts = [r["messages"][1]["content"] for r in generate_task("arithmetic", 200)["train"]]
    same = drift_report(support, more_support, tokenize=words)
    shifted = drift_report(support, math_prompts, tokenize=words)
    assert same.verdict == "stable", same
    assert shifted.verdict == "significant" and shifted.token_psi > same.token_psi * 10
    with pytest.raises(DataError, match="live prompts"):
        drift_report(support, support[:3], tokenize=words)
