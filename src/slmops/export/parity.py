"""Parity: how closely an exported artifact follows its parent, measured through the Runtime protocol.

:func:`measure_parity` takes two open runtimes — any engines, since it only uses ``encode_prompt``,
``tokenize``, ``apply_chat_template``, ``sequence_logits`` and ``generate`` — and a list of dataset records:

* **next-token distributions** on the records' text (chats rendered with the reference's chat
  template), tokenized once by the reference and fed to both: mean KL(reference ‖ candidate), its
  95th percentile, top-1 agreement, and each side's perplexity (so ``ppl_increase`` is relative);
* **greedy generation** from the records' prompts (a chat up to its last assistant turn, or the
  first half of a text): the share of prompts where both produce exactly the same tokens;
* **task score** where a record carries an answer: token-F1 (:func:`slmops.evaluate.metrics.token_f1`)
  of each side's greedy output against it (``task_delta`` = candidate − reference, ``task_drop`` its negation);
* ``tokenizer_match``: the share of texts both runtimes tokenize identically.

:data:`PARITY_LIMITS` names the metric and direction of each threshold in :class:`ParityConfig`;
:func:`check_parity` checks them with :mod:`slmops.evaluate.gates` (a gate whose metric this data
cannot measure — a task score without answered records, greedy match with ``greedy_prompts=0`` — is
reported as skipped, not failed); :func:`report_markdown` renders both. The default gates
(:data:`DEFAULT_GATES`) are about what a user notices — the task score and the greedy answers — with
top-1 and KL limits set from measurements of a real 4-bit model; ``docs/export.md`` gives the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from slmops.errors import ConfigError, DataError, SlmopsError
from slmops.evaluate.gates import GateResult, Limits, check_gates, limit_gates
from slmops.evaluate.metrics import token_f1
from slmops.evaluate.report import fmt_value
from slmops.runtimes.base import GenerationParams, Runtime
from slmops.runtimes.sampling import log_softmax

#: Default gates. Measured on SmolLM2-135M-Instruct LoRA-tuned on a 5-intent task (docs/export.md,
#: "Parity gates"): GGUF Q4_K_M — no task loss — KL 0.10, top-1 0.79, greedy 1.0; an ONNX int4 export
#: that lost 0.225 accuracy — KL 0.56. KL ≤ 0.25 passes the first with 2.5× headroom and fails the second.
DEFAULT_GATES: dict[str, float] = {"max_kl": 0.25, "min_top1": 0.70, "min_greedy_match": 0.5, "max_task_drop": 0.05}
#: The threshold fields of :class:`ParityConfig` (and the optimizer's) as gates on the parity metrics.
PARITY_LIMITS: Limits = {
    "max_kl": ("kl_mean", "<="), "min_top1": ("top1_agreement", ">="), "max_ppl_increase": ("ppl_increase", "<="),
    "min_greedy_match": ("greedy_match", ">="), "max_task_drop": ("task_drop", "<="),
}


class ParityConfig(BaseModel):
    """Config of the ``parity`` stage: how much to measure, and the gates."""

    model_config = ConfigDict(extra="forbid")

    split: str | None = Field(None, description="Dataset split to read (default: the unsplit data, else test, validation, train)")
    max_texts: int = Field(32, ge=1, le=100_000, description="Records scored for KL, top-1 agreement and perplexity")
    max_tokens: int = Field(256, ge=2, le=32768, description="Tokens scored per record (longer ones are cut)")
    greedy_prompts: int = Field(8, ge=0, le=10_000, description="Prompts generated greedily on both sides")
    greedy_tokens: int = Field(16, ge=1, le=1024, description="New tokens per greedy comparison (answered records: up to the answer's length + 8)")
    max_kl: float | None = Field(DEFAULT_GATES["max_kl"], ge=0, description="Gate: mean KL(reference || candidate) must not exceed this (nats)")
    min_top1: float | None = Field(DEFAULT_GATES["min_top1"], ge=0, le=1, description="Gate: top-1 agreement must be at least this")
    max_ppl_increase: float | None = Field(None, ge=0, description="Gate: relative perplexity increase must not exceed this (0.05 = 5%)")
    min_greedy_match: float | None = Field(DEFAULT_GATES["min_greedy_match"], ge=0, le=1,
                                           description="Gate: share of identical greedy outputs must be at least this")
    max_task_drop: float | None = Field(DEFAULT_GATES["max_task_drop"], ge=0,
                                        description="Gate: task score (token F1 of greedy answers) may drop by at most this")
    candidate_options: dict[str, Any] = Field(default_factory=dict, description="Options for opening the candidate's runtime (e.g. n_ctx)")
    reference_options: dict[str, Any] = Field(default_factory=dict, description="Options for opening the reference's runtime")


@dataclass
class _Sample:
    text: str
    prompt: str | None
    answer: str | None


def _render(rt: Any, messages: list[dict[str, str]], gen: bool) -> str | None:
    try:
        return str(rt.apply_chat_template(messages, add_generation_prompt=gen))
    except SlmopsError:
        return None


def _samples(records: list[Any], rt: Any) -> list[_Sample]:
    out = []
    for r in records:
        if r.kind == "text":
            out.append(_Sample(text=r.text, prompt=None, answer=None))
            continue
        msgs = [{"role": m.role, "content": m.content} for m in r.messages]
        prompt_msgs = [{"role": m.role, "content": m.content} for m in r.prompt_messages]
        text = _render(rt, msgs, False) or r.content_text()
        prompt = _render(rt, prompt_msgs, True) if prompt_msgs else None
        out.append(_Sample(text=text, prompt=prompt, answer=r.completion))
    return out


def measure_parity(candidate: Runtime, reference: Runtime, records: list[Any], cfg: ParityConfig, *, adapter: str | None = None) -> dict[str, Any]:
    """Parity metrics of ``candidate`` against ``reference`` on ``records`` (see the module docstring).

    ``adapter`` names a run-time adapter the candidate scores and generates with (an ONNX export with ``--adapter-mode runtime``).
    """
    for side, rt in (("candidate", candidate), ("reference", reference)):
        if not rt.capabilities.logits:
            raise ConfigError(f"the {side}'s runtime ({rt.name}) returns no logits", why="parity compares next-token distributions",
                              fix="compare artifacts whose runtimes return logits")
    samples = _samples(records, reference)
    if not samples:
        raise DataError("the parity dataset has no records", fix="pass a dataset with text, chat or instruction records")
    limit = min(cfg.max_tokens, reference.context_length, candidate.context_length)
    kls: list[np.ndarray] = []
    agree = nll_ref = nll_cand = 0.0
    positions = tok_same = tok_seen = 0
    for s in samples[: cfg.max_texts]:
        ids = reference.encode_prompt(s.text)[:limit]
        tok_seen += 1
        tok_same += int(candidate.encode_prompt(s.text)[:limit] == ids)
        if len(ids) < 2:
            continue
        lr, lc = reference.sequence_logits(ids)[:-1], candidate.sequence_logits(ids, adapter=adapter)[:-1]
        v = min(lr.shape[-1], lc.shape[-1])
        lr, lc = log_softmax(lr[:, :v]), log_softmax(lc[:, :v])
        kls.append(np.sum(np.exp(lr) * (lr - lc), axis=-1))
        agree += float(np.sum(np.argmax(lr, -1) == np.argmax(lc, -1)))
        nxt = np.asarray(ids[1:])
        rows = np.arange(len(nxt))
        nll_ref -= float(np.sum(lr[rows, nxt]))
        nll_cand -= float(np.sum(lc[rows, nxt]))
        positions += len(nxt)
    if positions == 0:
        raise DataError("no record of the parity dataset has two tokens to score", fix="use a dataset with longer texts")
    kl = np.concatenate(kls)
    ppl_ref, ppl_cand = math.exp(nll_ref / positions), math.exp(nll_cand / positions)
    metrics: dict[str, Any] = {
        "kl_mean": float(kl.mean()),
        "kl_p95": float(np.percentile(kl, 95)),
        "kl_max": float(kl.max()),
        "top1_agreement": agree / positions,
        "ppl_reference": ppl_ref,
        "ppl_candidate": ppl_cand,
        "ppl_increase": ppl_cand / ppl_ref - 1.0,
        "tokens_scored": positions,
        "texts_scored": len(kls),
        "tokenizer_match": tok_same / tok_seen if tok_seen else None,
    }
    metrics.update(_greedy(candidate, reference, samples, cfg, adapter))
    return metrics


def _greedy(candidate: Runtime, reference: Runtime, samples: list[_Sample], cfg: ParityConfig, adapter: str | None) -> dict[str, Any]:
    same = n = 0
    prefix = 0.0
    f1_ref: list[float] = []
    f1_cand: list[float] = []
    for s in samples:
        if n >= cfg.greedy_prompts:
            break
        if s.prompt is not None:
            ids = reference.encode_prompt(s.prompt)
        else:
            full = reference.encode_prompt(s.text)
            ids = full[: max(1, len(full) // 2)]
        room = min(reference.context_length, candidate.context_length) - len(ids) - 1
        budget = cfg.greedy_tokens if s.answer is None else min(64, len(reference.tokenize(s.answer, add_special_tokens=False)) + 8)
        budget = min(budget, room)
        if budget < 1 or not ids:
            continue
        params = GenerationParams(max_tokens=budget, temperature=0.0)
        a, b = reference.generate(ids, params), candidate.generate(ids, params, adapter=adapter)
        n += 1
        same += int(a.token_ids == b.token_ids)
        k = next((i for i, (x, y) in enumerate(zip(a.token_ids, b.token_ids, strict=False)) if x != y), min(len(a.token_ids), len(b.token_ids)))
        prefix += k / max(1, max(len(a.token_ids), len(b.token_ids)))
        if s.answer is not None:
            f1_ref.append(token_f1(a.text, s.answer))
            f1_cand.append(token_f1(b.text, s.answer))
    out: dict[str, Any] = {"greedy_compared": n, "greedy_match": same / n if n else None, "greedy_prefix_agreement": prefix / n if n else None}
    if f1_ref:
        delta = float(np.mean(f1_cand) - np.mean(f1_ref))
        out.update(task_reference=float(np.mean(f1_ref)), task_candidate=float(np.mean(f1_cand)), task_delta=delta, task_drop=-delta,
                   task_records=len(f1_ref))
    else:
        out.update(task_reference=None, task_candidate=None, task_delta=None, task_drop=None, task_records=0)
    return out


def check_parity(metrics: dict[str, Any], cfg: Any) -> list[GateResult]:
    """The configured gates (``cfg`` has the :data:`PARITY_LIMITS` fields) checked on parity metrics; unmeasured ones are skipped."""
    return check_gates(limit_gates(cfg, PARITY_LIMITS), metrics, unmeasured="skip")


def _result(g: dict[str, Any]) -> str:
    return "skipped (not measured)" if g.get("skipped") else "pass" if g["passed"] else "FAIL"


def report_markdown(metrics: dict[str, Any], gates: list[dict[str, Any]], *, candidate: str, reference: str) -> str:
    """A human-readable parity report."""
    lines = [f"# Parity: {candidate} vs {reference}", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {fmt_value(v)} |" for k, v in metrics.items() if not isinstance(v, dict | list)]
    if gates:
        lines += ["", "| gate | value | limit | result |", "| --- | --- | --- | --- |"]
        lines += [f"| {g['metric']} {g['op']} | {fmt_value(g['value'])} | {fmt_value(g['threshold'])} | {_result(g)} |" for g in gates]
    return "\n".join(lines) + "\n"
