"""Knowledge-distillation losses: forward KL, reverse KL and JSD, from full logits or from top-k logprobs.

Pure torch functions over the last dimension (the vocabulary, or the k kept entries):

* :func:`forward_kl` — KL(p_teacher ‖ q_student): mean-seeking, the classic Hinton KD.
* :func:`reverse_kl` — KL(q_student ‖ p_teacher): mode-seeking (MiniLLM).
* :func:`jsd` — generalised Jensen–Shannon, β·KL(p ‖ m) + (1−β)·KL(q ‖ m) with m = β·p + (1−β)·q
  (GKD); β = 0.5 is the symmetric JSD, bounded by ln 2.

:func:`kd_loss_from_logits` softens both distributions with temperature T (softmax of logits / T)
and scales by T² so gradients keep their size across temperatures (Hinton et al., 2015).
:func:`kd_loss_from_topk` does the same when only the teacher's top-k logprobs are known (an API
teacher): both distributions are renormalised over the teacher's k tokens (the student's logits
are gathered at those ids), the usual sparse-KD approximation. Both return the **sum** over the
positions where ``mask`` is true (the answer tokens), so callers divide by the token count they
use for cross-entropy, and :func:`mix` blends: ``alpha · KD + (1 − alpha) · CE``.
"""

from __future__ import annotations

import math
from typing import Any

from slmops._optional import require

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


def _torch() -> Any:
    return require("torch", extra="train", purpose="distillation losses")


def _kl(logp: Any, logq: Any) -> Any:
    """KL(p ‖ q) over the last dim from log-probabilities, with 0 · log 0 = 0."""
    torch = _torch()
    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)


def forward_kl(student_logp: Any, teacher_logp: Any) -> Any:
    """KL(teacher ‖ student) per position."""
    return _kl(teacher_logp, student_logp)


def reverse_kl(student_logp: Any, teacher_logp: Any) -> Any:
    """KL(student ‖ teacher) per position."""
    return _kl(student_logp, teacher_logp)


def jsd(student_logp: Any, teacher_logp: Any, beta: float = 0.5) -> Any:
    """Generalised JSD per position: β·KL(p_t ‖ m) + (1−β)·KL(q_s ‖ m), m = β·p_t + (1−β)·q_s."""
    torch = _torch()
    if not 0.0 < beta < 1.0:
        raise ValueError(f"jsd beta must be in (0, 1), not {beta}")
    m = torch.logsumexp(torch.stack([teacher_logp + math.log(beta), student_logp + math.log(1 - beta)]), dim=0)
    return beta * _kl(teacher_logp, m) + (1 - beta) * _kl(student_logp, m)


def divergence(name: str, student_logp: Any, teacher_logp: Any, *, beta: float = 0.5) -> Any:
    if name == "forward_kl":
        return forward_kl(student_logp, teacher_logp)
    if name == "reverse_kl":
        return reverse_kl(student_logp, teacher_logp)
    if name == "jsd":
        return jsd(student_logp, teacher_logp, beta)
    raise ValueError(f"unknown divergence {name!r}; use one of {', '.join(DIVERGENCES)}")


def kd_loss_from_logits(
    student_logits: Any, teacher_logits: Any, mask: Any, *, kind: str = "forward_kl", temperature: float = 1.0, beta: float = 0.5
) -> Any:
    """Σ over masked positions of the divergence between softened distributions, times T².

    ``student_logits`` and ``teacher_logits`` are [..., V] over the same vocabulary; ``mask`` is a
    bool tensor of the leading shape.
    """
    torch = _torch()
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(f"vocabulary sizes differ: student {student_logits.shape[-1]}, teacher {teacher_logits.shape[-1]}")
    s = torch.log_softmax(student_logits[mask].float() / temperature, dim=-1)
    t = torch.log_softmax(teacher_logits[mask].float() / temperature, dim=-1)
    return divergence(kind, s, t, beta=beta).sum() * temperature**2


def kd_loss_from_topk(
    student_logits: Any,
    topk_ids: Any,
    topk_logprobs: Any,
    mask: Any,
    *,
    kind: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
) -> Any:
    """Like :func:`kd_loss_from_logits` with the teacher known only by its top-k (ids [..., K], logprobs [..., K]).

    Entries with logprob ``-inf`` are padding (a position with fewer than k alternatives).
    """
    torch = _torch()
    ids = topk_ids[mask]
    t_raw = topk_logprobs[mask].float()
    pad = torch.isinf(t_raw)
    s_sel = student_logits[mask].float().gather(-1, ids.clamp(min=0)) / temperature
    s = torch.log_softmax(s_sel.masked_fill(pad, float("-inf")), dim=-1)
    t = torch.log_softmax(t_raw / temperature, dim=-1)
    s = s.masked_fill(pad, float("-inf"))
    return divergence(kind, s, t, beta=beta).sum() * temperature**2


def mix(ce: Any, kd: Any, alpha: float) -> Any:
    """``alpha · kd + (1 − alpha) · ce`` (alpha = 1: KD only; 0: plain SFT)."""
    return alpha * kd + (1.0 - alpha) * ce
