"""Training data for fine-tuning: dataset splits → tokenized, loss-masked, optionally packed batches.

Records come from :func:`slmops.data.io.read_dataset` and become examples through
:func:`slmops.data.examples.build_examples` (the model's chat template or a ``{field}`` text
template; labels only on the assistant/output tokens). This module adds what training needs on
top: the validation split (carved deterministically from the training data when the dataset has
none), the one-line errors for records without an answer and for data that truncation emptied,
packing, a seeded per-epoch order that a resumed run reproduces, and collation into tensors.

Packing puts several whole examples in one sequence and restarts ``position_ids`` at each one;
with no attention mask, transformers derives a block-diagonal causal mask from those positions, so
examples never attend to each other. The first label of every packed segment is dropped, so no
loss crosses an example boundary.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from typing import Any

from slmops._optional import require
from slmops.data.examples import Example, build_examples
from slmops.data.io import dataset_splits, read_dataset
from slmops.data.records import Record
from slmops.data.split import split_records
from slmops.data.templates import IGNORE_INDEX
from slmops.errors import DataError
from slmops.finetune.config import TrainConfig
from slmops.store.artifact import Artifact

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sequence:
    """One training row: token ids, labels (-100 = no loss) and, when packed, restarting positions."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def label_tokens(self) -> int:
        """Tokens that carry loss after the causal shift (the first position never does)."""
        return sum(1 for t in self.labels[1:] if t != IGNORE_INDEX)


@dataclass
class TrainData:
    train: list[Sequence]
    validation: list[Sequence]
    validation_records: list[Record]
    counts: dict[str, Any] = field(default_factory=dict)


def _rid(rec: Record, n: int) -> str:
    return f"{rec.id!r}" if rec.id is not None else f"#{n + 1}"


def load_records(artifact: Artifact, cfg: TrainConfig) -> tuple[list[Record], list[Record], str]:
    """(train records, validation records, where validation came from)."""
    splits = dataset_splits(artifact)
    if cfg.train_split in splits:
        train = read_dataset(artifact, cfg.train_split)
    elif splits == ["data"]:
        train = read_dataset(artifact)
    else:
        raise DataError(
            f"dataset {artifact.short} has no split {cfg.train_split!r}",
            why=f"it has: {', '.join(splits) or 'nothing'}",
            fix="name the split to train on with --train-split, or split the dataset first (`slmops data split`)",
        )
    if cfg.validation_split in splits:
        return train, read_dataset(artifact, cfg.validation_split), cfg.validation_split
    if cfg.validation_fraction <= 0:
        return train, [], "none"
    if len(train) < 2:
        raise DataError(f"dataset {artifact.short} has {len(train)} record(s)", why="too few to hold out a validation split",
                        fix="add records, or pass --validation-fraction 0")
    f = cfg.validation_fraction
    parts = split_records(train, ratios={"train": 1 - f, "validation": f, "test": 0.0}, seed=cfg.seed)
    log.info("no %r split: holding out %d of %d records for validation (seed %d)",
             cfg.validation_split, len(parts.splits["validation"]), len(train), cfg.seed)
    return parts.splits["train"], parts.splits["validation"], f"{f:g} of {cfg.train_split}"


def check_answers(records: list[Record], split: str) -> None:
    """Every non-text record must hold an assistant turn to learn from; else name the first that does not."""
    for n, rec in enumerate(records):
        if rec.kind != "text" and not any(m.role == "assistant" for m in rec.messages):
            raise DataError(
                f"{split} record {_rid(rec, n)} has no assistant turn",
                why="fine-tuning learns the assistant's answers and this record has none",
                fix="add the expected answer as an assistant message (or an 'output' field), or drop the record",
            )


def _to_sequences(examples: list[Example]) -> list[Sequence]:
    return [Sequence(list(e.input_ids), list(e.labels)) for e in examples]


def pack(examples: list[Sequence], max_length: int) -> list[Sequence]:
    """Greedily fill rows of at most ``max_length`` tokens with whole examples, in order."""
    packed: list[Sequence] = []
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    for ex in examples:
        if ids and len(ids) + len(ex) > max_length:
            packed.append(Sequence(ids, labels, pos))
            ids, labels, pos = [], [], []
        ids += ex.input_ids
        labels += [IGNORE_INDEX, *ex.labels[1:]]
        pos += list(range(len(ex)))
    if ids:
        packed.append(Sequence(ids, labels, pos))
    return packed


def build_data(tokenizer: Any, artifact: Artifact, cfg: TrainConfig, *, max_length: int) -> TrainData:
    """Read, check, tokenize, mask (and pack) the training and validation data."""
    train_recs, val_recs, val_source = load_records(artifact, cfg)
    if not train_recs:
        raise DataError(f"the {cfg.train_split} split of dataset {artifact.short} is empty", fix="pass a dataset with training records")
    check_answers(train_recs, cfg.train_split)
    check_answers(val_recs, cfg.validation_split)
    tr = build_examples(tokenizer, train_recs, template=cfg.text_template, max_length=max_length)
    va = build_examples(tokenizer, val_recs, template=cfg.text_template, max_length=max_length) if val_recs else None
    for name, built in (("training", tr), ("validation", va)):
        if built is not None and not built.examples:
            raise DataError(
                f"no {name} examples left after filtering: all {built.total} lost their answer tokens to truncation",
                why=f"--max-length {max_length} is shorter than the prompts",
                fix="raise --max-length, or shorten the prompts",
            )
    train = _to_sequences(tr.examples)
    if cfg.packing:
        train = pack(train, max_length)
    validation = _to_sequences(va.examples) if va is not None else []
    counts: dict[str, Any] = {
        "train_records": tr.total,
        "train_examples": len(tr.examples),
        "train_truncated": tr.truncated,
        "train_dropped": tr.dropped,
        "train_sequences": len(train),
        "train_tokens_per_epoch": sum(len(s) for s in train),
        "train_label_tokens_per_epoch": sum(s.label_tokens for s in train),
        "validation_records": va.total if va else 0,
        "validation_examples": len(validation),
        "validation_truncated": va.truncated if va else 0,
        "validation_source": val_source,
        "max_length": max_length,
    }
    if tr.truncated or (va and va.truncated):
        log.warning("--max-length %d truncated %d training and %d validation example(s)", max_length, tr.truncated, va.truncated if va else 0)
    return TrainData(train, validation, list(val_recs), counts)


# -- order and batches ----------------------------------------------------------------------------
def epoch_batches(n: int, batch_size: int, *, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """This process's micro-batches (lists of row indices) for ``epoch``: a seeded shuffle of all rows.

    Every process computes the same order and takes its own slice of each global batch. With
    several processes an incomplete last global batch is dropped so every process takes the same
    number of steps.
    """
    order = list(range(n))
    random.Random(f"slmops-finetune/{seed}/{epoch}").shuffle(order)
    global_bs = batch_size * world
    count = n // global_bs if world > 1 else math.ceil(n / global_bs)
    return [order[i * global_bs + rank * batch_size : i * global_bs + (rank + 1) * batch_size] for i in range(count)]


def steps_per_epoch(n: int, batch_size: int, grad_accum: int, world: int = 1) -> int:
    global_bs = batch_size * world
    micro = n // global_bs if world > 1 else math.ceil(n / global_bs)
    return max(1, math.ceil(micro / grad_accum))


def collate(rows: list[Sequence], pad_id: int) -> dict[str, Any]:
    """Right-pad ``rows`` into tensors. Packed rows get ``position_ids`` and no attention mask."""
    torch = require("torch", extra="train")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    packed = rows[0].position_ids is not None
    if packed:
        pos = torch.zeros((len(rows), width), dtype=torch.long)
    else:
        mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r)
        ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        if packed:
            pos[i, :n] = torch.tensor(r.position_ids)
            pos[i, n:] = torch.arange(width - n)  # padding forms its own segment
        else:
            mask[i, :n] = 1
    batch: dict[str, Any] = {"input_ids": ids, "labels": labels}
    if packed:
        batch["position_ids"] = pos
    else:
        batch["attention_mask"] = mask
    batch["tokens"] = sum(len(r) for r in rows)
    batch["label_tokens"] = sum(r.label_tokens for r in rows)
    return batch
