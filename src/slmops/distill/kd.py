"""The extra loss terms stage 2 hands the fine-tuning loop: KD from a local teacher's logits or from stored top-k.

Both are callables ``(student_logits, batch, ce_sum) -> loss_sum`` for
:func:`slmops.finetune.loop.train`'s ``loss_fn`` hook; they return ``alpha · KD + (1 − alpha) · CE``
summed over the answer tokens, which the loop divides by the answer-token count as it does CE.

* :class:`TeacherLogitsKD` runs the teacher on the same batch (no gradient) and compares full
  distributions. It needs the same tokenizer: :func:`check_same_vocabulary` says clearly when not.
* :class:`TopKKD` looks each training row up (by its token ids) in a table built from the
  dataset's ``topk/<split>.jsonl`` (written by ``distill.generate``): the teacher's k best token ids
  and logprobs at every answer position. Teacher tokens are matched to the student's tokenization
  of the answer; a record whose tokens do not line up trains on CE alone and is counted.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from slmops._optional import require
from slmops.data.templates import IGNORE_INDEX
from slmops.distill.losses import kd_loss_from_logits, kd_loss_from_topk, mix
from slmops.errors import ConfigError, DataError
from slmops.store.artifact import Artifact

log = logging.getLogger(__name__)
MIN_ALIGNED = 0.5


@dataclass
class KDSettings:
    kind: str = "forward_kl"
    temperature: float = 2.0
    alpha: float = 0.5
    beta: float = 0.5


@dataclass
class KDStats:
    steps: int = 0
    kd_sum: float = 0.0
    ce_sum: float = 0.0
    kd_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kd_loss_mean": round(self.kd_sum / self.kd_tokens, 6) if self.kd_tokens else None,
            "kd_tokens": self.kd_tokens,
            "kd_micro_batches": self.steps,
        }


def check_same_vocabulary(student_tok: Any, teacher_tok: Any, *, student: str, teacher: str) -> int:
    """The shared vocabulary size; :class:`ConfigError` when the tokenizers differ."""
    sv, tv = student_tok.get_vocab(), teacher_tok.get_vocab()
    if sv != tv:
        only_s = sorted(set(sv) - set(tv))[:3]
        moved = [t for t in sv if t in tv and sv[t] != tv[t]][:3]
        raise ConfigError(
            f"logit KD needs the teacher and the student to share a tokenizer, and theirs differ "
            f"(student {student}: {len(sv)} tokens, teacher {teacher}: {len(tv)} tokens)",
            why=(f"e.g. only the student has {only_s}" if only_s else f"e.g. {moved} have other ids"),
            fix="use --mode sft (sequence-level KD on the teacher's text works across vocabularies), or a student with the teacher's tokenizer",
        )
    return len(sv)


class TeacherLogitsKD:
    """KD against a local teacher model run on every training batch."""

    def __init__(self, teacher: Artifact, settings: KDSettings, vocab: int) -> None:
        from slmops.models.loading import load_model_and_tokenizer

        self.model, _ = load_model_and_tokenizer(teacher)
        self.model.requires_grad_(False)
        self.s = settings
        self.vocab = vocab
        self.stats = KDStats()

    def __call__(self, logits: Any, batch: dict[str, Any], ce: Any) -> Any:
        torch = require("torch", extra="train")
        from slmops.finetune.evaluation import forward_logits

        if next(self.model.parameters()).device != logits.device:
            self.model.to(logits.device)
        with torch.no_grad():
            t = forward_logits(self.model, batch, logits.device)
        labels = batch["labels"].to(logits.device)
        mask = labels[:, 1:] != IGNORE_INDEX
        kd = kd_loss_from_logits(
            logits[:, :-1, : self.vocab], t[:, :-1, : self.vocab], mask, kind=self.s.kind, temperature=self.s.temperature, beta=self.s.beta
        )
        self._count(kd, ce, int(mask.sum()))
        return mix(ce, kd, self.s.alpha)

    def _count(self, kd: Any, ce: Any, n: int) -> None:
        self.stats.steps += 1
        self.stats.kd_sum += float(kd.detach())
        self.stats.ce_sum += float(ce.detach())
        self.stats.kd_tokens += n


@dataclass
class TopKTable:
    """token ids of a training row → (label positions, their top-k ids, their top-k logprobs)."""

    rows: dict[tuple[int, ...], tuple[list[int], list[list[int]], list[list[float]]]] = field(default_factory=dict)
    k: int = 0
    records: int = 0
    aligned: int = 0


def _id_table(tokenizer: Any) -> dict[str, int]:
    """decoded text of each token → its id (the lowest id when several decode alike)."""
    table: dict[str, int] = {}
    for i in range(len(tokenizer)):
        table.setdefault(tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False), i)
    return table


def _ids(entry: dict[str, Any], table: dict[str, int] | None) -> tuple[list[int | None], list[list[int | None]]]:
    if "ids" in entry and "top_ids" in entry:
        return entry["ids"], entry["top_ids"]
    assert table is not None
    return [table.get(t) for t in entry["tokens"]], [[table.get(t) for t in row] for row in entry["top_tokens"]]


def build_topk_table(tokenizer: Any, data: Artifact, split: str, *, template: str | None, max_length: int) -> TopKTable:
    """Line the stored top-k of ``split`` up with the student's tokenization of each answer."""
    from slmops.data.examples import build_example
    from slmops.data.io import read_dataset

    path = data.path / "topk" / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(
            f"dataset sha256:{data.short} has no top-k logprobs for its {split} split",
            fix="generate it with --top-logprobs K (the teacher must return logprobs), pass a local --teacher, or use --mode sft",
        )
    records = read_dataset(data, split)
    entries = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    table = None if all("ids" in e for e in entries) else _id_table(tokenizer)
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    out = TopKTable(k=max((len(r) for e in entries for r in e["top_lp"]), default=0), records=len(entries))
    for e in entries:
        ex = build_example(tokenizer, records[e["row"]], template=template, max_length=max_length)
        positions = [i for i, lab in enumerate(ex.labels) if lab != IGNORE_INDEX]
        ids, top_ids = _ids(e, table)
        n = len(ids)
        got = [ex.input_ids[p] for p in positions]
        if n and got[:n] != ids and (ids[-1] is None or ids[-1] in specials):  # the teacher's stop token vs the template's end marker
            n -= 1
        if n <= 0 or got[:n] != ids[:n]:
            continue
        keep_ids = [[t if t is not None else -1 for t in row] for row in top_ids[:n]]
        keep_lp = [
            [lp if t is not None else float("-inf") for t, lp in zip(row, lps, strict=True)]
            for row, lps in zip(top_ids[:n], e["top_lp"][:n], strict=True)
        ]
        out.rows[tuple(ex.input_ids)] = (positions[:n], keep_ids, keep_lp)
        out.aligned += 1
    if out.records and out.aligned / out.records < MIN_ALIGNED:
        raise ConfigError(
            f"the stored top-k logprobs do not match the student's tokenizer ({out.aligned} of {out.records} answers line up)",
            why="the teacher's vocabulary differs from the student's, so its token probabilities cannot be compared",
            fix="use --mode sft (sequence-level KD on the teacher's text), or a student with the teacher's tokenizer",
        )
    return out


class TopKKD:
    """KD against the teacher's stored top-k logprobs."""

    def __init__(self, table: TopKTable, settings: KDSettings) -> None:
        self.table = table
        self.s = settings
        self.stats = KDStats()
        self.misses = 0

    def __call__(self, logits: Any, batch: dict[str, Any], ce: Any) -> Any:
        torch = require("torch", extra="train")
        b, w = batch["input_ids"].shape
        k = max(self.table.k, 1)
        ids = torch.zeros((b, w, k), dtype=torch.long)
        lps = torch.full((b, w, k), float("-inf"))
        has = torch.zeros((b, w), dtype=torch.bool)
        lengths = batch["attention_mask"].sum(-1).tolist() if "attention_mask" in batch else [w] * b
        for i in range(b):
            hit = self.table.rows.get(tuple(batch["input_ids"][i, : int(lengths[i])].tolist()))
            if hit is None:
                self.misses += 1
                continue
            for p, row_ids, row_lp in zip(*hit, strict=True):
                ids[i, p, : len(row_ids)] = torch.tensor(row_ids)
                lps[i, p, : len(row_lp)] = torch.tensor(row_lp)
                has[i, p] = True
        mask = has[:, 1:].to(logits.device)
        if not bool(mask.any()):
            return ce
        kd = kd_loss_from_topk(
            logits[:, :-1],
            ids[:, 1:].to(logits.device),
            lps[:, 1:].to(logits.device),
            mask,
            kind=self.s.kind,
            temperature=self.s.temperature,
            beta=self.s.beta,
        )
        self.stats.steps += 1
        self.stats.kd_sum += float(kd.detach())
        self.stats.ce_sum += float(ce.detach())
        self.stats.kd_tokens += int(mask.sum())
        # positions with KD mix; answer positions without teacher info keep their CE in full
        return mix(ce, kd, self.s.alpha)
