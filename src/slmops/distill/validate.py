"""Checking teacher answers before they become training data, and the report of what was dropped and why.

Each answer runs through the checks in a fixed order; the first that fails names the reason:

==================  ===================================================================
``failed``          the request never got an answer (after retries)
``truncated``       ``finish_reason == "length"``: the answer was cut off
``no_final_answer`` chain-of-thought mode, and no ``Final answer:`` line
``empty``           nothing but whitespace
``refusal``         matches a refusal pattern ("I'm sorry, but I can't …"; with chain of thought,
                    anywhere in the reasoning too)
``too_short``       fewer than ``min_chars`` characters
``too_long``        more than ``max_chars`` characters
``invalid_json``    the task expects JSON and the answer is not a JSON object/array
``schema``          the JSON breaks ``json_schema``
``not_a_label``     classification: the answer is none of the labels
``not_a_number``    math: the final answer is not a number
``regex``           the answer does not match ``regex``
``duplicate``       the same answer to the same prompt was already kept
==================  ===================================================================

:class:`ValidationReport` counts kept and dropped records per reason and split, with a few
examples of each, and goes into the dataset as ``validation_report.json``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from slmops.errors import ConfigError
from slmops.evaluate.jsonmetrics import check_schema, is_json, parse_json_output, schema_errors

DEFAULT_REFUSALS = (
    r"^\s*(i'?m|i am)\s+(sorry|afraid)\b",
    r"\b(i|we)\s+(can(no|')?t|cannot|won'?t|am unable to|'m unable to|am not able to)\s+(help|assist|comply|provide|do that|answer)",
    r"\bas an ai( language)? model\b",
    r"^\s*sorry,? (but )?i\b",
)
REASONS = (
    "failed",
    "truncated",
    "no_final_answer",
    "empty",
    "refusal",
    "too_short",
    "too_long",
    "invalid_json",
    "schema",
    "not_a_label",
    "not_a_number",
    "regex",
    "duplicate",
)
EXAMPLES_PER_REASON = 3


class ValidationConfig(BaseModel):
    """Which teacher answers to drop before training on them."""

    model_config = ConfigDict(extra="forbid")
    drop_truncated: bool = Field(True, description="Drop answers cut off at --max-tokens (finish_reason=length)")
    drop_refusals: bool = Field(True, description="Drop answers that match a refusal pattern")
    refusal_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REFUSALS), description="Regexes (case-insensitive) that mark a refusal"
    )
    min_chars: int = Field(1, ge=1, description="Drop answers shorter than this many characters")
    max_chars: int | None = Field(None, ge=1, description="Drop answers longer than this many characters")
    expect_json: bool | None = Field(None, description="Require a JSON object/array (default: only for --task extraction)")
    json_schema: dict[str, Any] | None = Field(None, description="JSON Schema the answer must satisfy (implies --expect-json)")
    regex: str | None = Field(None, description="Drop answers that do not match this regex (re.search)")
    labels: list[str] | None = Field(None, description="Allowed answers for --task classification (default: the prompts' labels)")
    drop_duplicates: bool = Field(True, description="Drop an answer identical to one already kept for the same prompt")

    @field_validator("refusal_patterns", "regex")
    @classmethod
    def _compiles(cls, v: Any) -> Any:
        for p in [v] if isinstance(v, str) else v or []:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"{p!r} is not a valid regex: {exc}") from None
        return v

    @field_validator("json_schema")
    @classmethod
    def _schema(cls, v: Any) -> Any:
        if v is not None:
            try:
                check_schema(v, "--json-schema")
            except ConfigError as exc:
                raise ValueError(exc.message) from None
        return v


@dataclass
class Validator:
    """Applies :class:`ValidationConfig` to answers; keeps the state the duplicate check needs."""

    cfg: ValidationConfig
    task: str = "conversation"
    labels: dict[str, str] = field(default_factory=dict)
    _seen: set[tuple[str, str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._refusals = [re.compile(p, re.IGNORECASE) for p in self.cfg.refusal_patterns] if self.cfg.drop_refusals else []
        self._regex = re.compile(self.cfg.regex) if self.cfg.regex else None
        self._json = bool(self.cfg.json_schema) or (self.cfg.expect_json if self.cfg.expect_json is not None else self.task == "extraction")

    def is_refusal(self, text: str) -> bool:
        return any(p.search(text) for p in self._refusals)

    def check(self, answer: str, *, prompt: str, finish_reason: str | None = None) -> str | None:
        """The reason to drop ``answer`` (already cleaned), or None to keep it."""
        from slmops.distill.prompting import is_number
        from slmops.evaluate.metrics import normalize_label

        if self.cfg.drop_truncated and finish_reason == "length":
            return "truncated"
        text = answer.strip()
        if not text:
            return "empty"
        if self.is_refusal(text):
            return "refusal"
        if len(text) < self.cfg.min_chars:
            return "too_short"
        if self.cfg.max_chars is not None and len(text) > self.cfg.max_chars:
            return "too_long"
        if self._json:
            value = parse_json_output(text)
            if not is_json(value):
                return "invalid_json"
            if self.cfg.json_schema and schema_errors(value, self.cfg.json_schema):
                return "schema"
        if self.task == "classification" and self.labels and normalize_label(text) not in self.labels:
            return "not_a_label"
        if self.task == "math" and not is_number(text):
            return "not_a_number"
        if self._regex is not None and not self._regex.search(text):
            return "regex"
        if self.cfg.drop_duplicates:
            key = (prompt, " ".join(text.split()).lower())
            if key in self._seen:
                return "duplicate"
            self._seen.add(key)
        return None


@dataclass
class ValidationReport:
    """Kept and dropped counts (per reason, per split) with a few examples of each reason."""

    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    by_split: dict[str, Counter[str]] = field(default_factory=dict)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, split: str, key: str, reason: str | None, text: str = "") -> None:
        counts = self.by_split.setdefault(split, Counter())
        if reason is None:
            self.kept += 1
            counts["kept"] += 1
            return
        self.dropped[reason] += 1
        counts[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append({"key": key, "answer": text[:300]})

    @property
    def total(self) -> int:
        return self.kept + sum(self.dropped.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "kept": self.kept,
            "dropped": sum(self.dropped.values()),
            "dropped_by_reason": {r: self.dropped[r] for r in REASONS if self.dropped[r]},
            "by_split": {s: dict(sorted(c.items())) for s, c in sorted(self.by_split.items())},
            "examples": self.examples,
        }
