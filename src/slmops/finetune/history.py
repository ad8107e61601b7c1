"""The training history: loss curves, evaluations, early stopping and the overfitting warning.

Pure Python (no torch), saved inside every checkpoint and restored on resume, so a resumed run
writes the same curves as an uninterrupted one. Only values that are a function of the seed and
data are kept here (losses, learning rate, gradient norm, token counts); wall-clock figures such
as tokens/s go to the manifest's metrics instead, so the artifact's content (and digest) is
reproducible.

Overfitting: after each evaluation the mean training loss since the previous evaluation is
compared too; when validation loss rose while training loss fell for ``overfit_patience``
evaluations in a row, a warning is logged once and ``overfit_step`` is recorded.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger(__name__)

CSV_COLUMNS = ("step", "epoch", "loss", "lr", "grad_norm", "tokens", "val_loss", "val_token_accuracy")


@dataclass
class History:
    train: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    best_val: float | None = None
    best_step: int | None = None
    since_best: int = 0
    rising: int = 0
    overfit_step: int | None = None
    tokens: int = 0

    def add_train(self, step: int, *, epoch: float, loss: float, lr: float, grad_norm: float | None, tokens: int) -> None:
        self.tokens += tokens
        row = {"step": step, "epoch": round(epoch, 6), "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": self.tokens}
        self.train.append(row)

    def _train_mean_since(self, step: int) -> float | None:
        losses = [r["loss"] for r in self.train if r["step"] > step]
        return sum(losses) / len(losses) if losses else None

    def add_eval(self, step: int, metrics: dict[str, float], *, min_delta: float = 0.0, overfit_patience: int = 2) -> bool:
        """Record an evaluation; True when it improved on the best validation loss."""
        prev = self.evals[-1] if self.evals else None
        train_mean = self._train_mean_since(prev["step"] if prev else -1)
        row = {"step": step, **metrics, "train_loss": train_mean}
        self.evals.append(row)
        val = metrics["val_loss"]
        improved = self.best_val is None or val < self.best_val - min_delta
        if improved:
            self.best_val, self.best_step, self.since_best = val, step, 0
        else:
            self.since_best += 1
        if prev is not None and prev.get("train_loss") is not None and train_mean is not None:
            if val > prev["val_loss"] and train_mean < prev["train_loss"]:
                self.rising += 1
            else:
                self.rising = 0
            if self.rising >= overfit_patience and self.overfit_step is None:
                self.overfit_step = step
                log.warning(
                    "possible overfitting at step %d: validation loss rose %d evaluation(s) in a row (now %.4f) while "
                    "training loss fell (now %.4f); consider fewer steps, a lower learning rate, more data or --early-stopping-patience",
                    step, self.rising, val, train_mean,
                )
        return improved

    # -- views ------------------------------------------------------------------------------------
    @property
    def last_loss(self) -> float | None:
        return self.train[-1]["loss"] if self.train else None

    @property
    def last_val(self) -> float | None:
        return self.evals[-1]["val_loss"] if self.evals else None

    @property
    def first_val(self) -> float | None:
        return self.evals[0]["val_loss"] if self.evals else None

    def eval_at(self, step: int) -> dict[str, Any] | None:
        return next((e for e in self.evals if e["step"] == step), None)

    def summary(self) -> dict[str, Any]:
        return {
            "steps": self.train[-1]["step"] if self.train else 0,
            "tokens": self.tokens,
            "best_val_loss": self.best_val,
            "best_step": self.best_step,
            "overfit_step": self.overfit_step,
        }

    def curves(self) -> dict[str, Any]:
        """What ``training/curves.json`` holds."""
        return {"train": self.train, "eval": self.evals, "summary": self.summary()}

    def csv(self) -> str:
        """One row per step (validation columns filled at evaluation steps); step 0 is the start evaluation."""
        by_step = {e["step"]: e for e in self.evals}
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        if 0 in by_step:
            e = by_step[0]
            w.writerow([0, 0, "", "", "", 0, _fmt(e["val_loss"]), _fmt(e.get("val_token_accuracy"))])
        for r in self.train:
            e = by_step.get(r["step"], {})
            w.writerow([r["step"], r["epoch"], _fmt(r["loss"]), _fmt(r["lr"]), _fmt(r["grad_norm"]), r["tokens"],
                        _fmt(e.get("val_loss")), _fmt(e.get("val_token_accuracy"))])
        return buf.getvalue()

    # -- checkpoint round trip ------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> History:
        return cls(**state)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    return repr(float(v)) if isinstance(v, float) else str(v)
