"""KD losses against hand computations."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from slmops.distill.losses import (
    forward_kl,
    jsd,
    kd_loss_from_logits,
    kd_loss_from_topk,
    mix,
    reverse_kl,
)

P = [0.7, 0.2, 0.1]  # teacher
Q = [0.5, 0.3, 0.2]  # student


def _lp(x):
    return torch.log(torch.tensor(x, dtype=torch.float64))


def test_divergences_match_hand_computation():
    fkl = sum(p * math.log(p / q) for p, q in zip(P, Q, strict=True))
    rkl = sum(q * math.log(q / p) for p, q in zip(P, Q, strict=True))
    m = [(p + q) / 2 for p, q in zip(P, Q, strict=True)]
    js = 0.5 * sum(p * math.log(p / x) for p, x in zip(P, m, strict=True)) + 0.5 * sum(
        q * math.log(q / x) for q, x in zip(Q, m, strict=True)
    )
    assert float(forward_kl(_lp(Q), _lp(P))) == pytest.approx(fkl, abs=1e-9)  # ≈ 0.0851
    assert float(reverse_kl(_lp(Q), _lp(P))) == pytest.approx(rkl, abs=1e-9)
    assert float(jsd(_lp(Q), _lp(P))) == pytest.approx(js, abs=1e-9)
    m2 = [0.3 * p + 0.7 * q for p, q in zip(P, Q, strict=True)]
    js2 = 0.3 * sum(p * math.log(p / x) for p, x in zip(P, m2, strict=True)) + 0.7 * sum(
        q * math.log(q / x) for q, x in zip(Q, m2, strict=True)
    )
    assert float(jsd(_lp(Q), _lp(P), beta=0.3)) == pytest.approx(js2, abs=1e-9)
    # zero probabilities: 0·log 0 = 0, no NaN
    z = torch.log(torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert float(forward_kl(_lp([0.5, 0.5]), z)) == pytest.approx(math.log(2))
    assert float(jsd(_lp([0.5, 0.5]), z)) < math.log(2)


def test_temperature_mask_and_t_squared():
    s_logits = torch.tensor([[[1.0, 0.0, -1.0], [0.0, 0.0, 0.0]]])
    t_logits = torch.tensor([[[2.0, 0.0, -2.0], [5.0, 5.0, 5.0]]])
    mask = torch.tensor([[True, False]])
    T = 2.0
    p = torch.softmax(torch.tensor([2.0, 0.0, -2.0]) / T, -1)
    q = torch.softmax(torch.tensor([1.0, 0.0, -1.0]) / T, -1)
    want = float((p * (p / q).log()).sum()) * T * T
    got = kd_loss_from_logits(s_logits, t_logits, mask, kind="forward_kl", temperature=T)
    assert float(got) == pytest.approx(want, rel=1e-5)
    both = kd_loss_from_logits(s_logits, t_logits, torch.tensor([[True, True]]), kind="forward_kl", temperature=T)
    assert float(both) == pytest.approx(want, rel=1e-5)  # the second position's distributions agree (both uniform)
    with pytest.raises(ValueError, match="vocabulary sizes differ"):
        kd_loss_from_logits(s_logits, t_logits[..., :2], mask)


def test_topk_renormalises_over_the_teachers_tokens():
    student = torch.tensor([[[0.0, 1.0, 2.0, 3.0]]])
    ids = torch.tensor([[[3, 1]]])
    lps = torch.log(torch.tensor([[[0.6, 0.2]]]))  # renormalised: 0.75 / 0.25
    mask = torch.tensor([[True]])
    p = torch.tensor([0.75, 0.25])
    q = torch.softmax(torch.tensor([3.0, 1.0]), -1)
    for kind, want in (("forward_kl", (p * (p / q).log()).sum()), ("reverse_kl", (q * (q / p).log()).sum())):
        assert float(kd_loss_from_topk(student, ids, lps, mask, kind=kind)) == pytest.approx(float(want), rel=1e-5)
    assert float(kd_loss_from_topk(student, ids, lps, mask, kind="jsd")) > 0
    # padding (-inf) entries are ignored
    ids3 = torch.tensor([[[3, 1, 0]]])
    lps3 = torch.cat([lps, torch.full((1, 1, 1), float("-inf"))], -1)
    assert float(kd_loss_from_topk(student, ids3, lps3, mask)) == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-5)


def test_gradients_flow_and_identical_distributions_give_zero():
    s = torch.randn(2, 3, 7, requires_grad=True)
    mask = torch.ones(2, 3, dtype=torch.bool)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        assert float(kd_loss_from_logits(s.detach(), s.detach(), mask, kind=kind)) == pytest.approx(0.0, abs=1e-5)
        loss = kd_loss_from_logits(s, torch.randn(2, 3, 7), mask, kind=kind, temperature=2.0)
        loss.backward()
        assert s.grad is not None and torch.isfinite(s.grad).all()
        s.grad = None
    assert float(mix(torch.tensor(2.0), torch.tensor(4.0), 0.25)) == pytest.approx(2.5)
