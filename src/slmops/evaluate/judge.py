"""LLM-as-judge: a model behind an OpenAI-compatible endpoint scores answers 1–5 against a rubric.

The judge sees the conversation, the answer and (when the dataset has one) the reference answer,
and must reply with a JSON object giving an integer score per criterion. The default rubric has
``relevance`` and ``coherence`` (as in G-Eval / the summarisation-evaluation literature); a custom
rubric maps criterion names to their descriptions. Scores stay on the 1–5 scale in reports and
gates (``judge_relevance>=4``). A verdict that cannot be parsed is counted, not guessed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from slmops.errors import ConfigError

DEFAULT_RUBRIC: dict[str, str] = {
    "relevance": "Does the answer address what the user asked? 1 = unrelated or empty, 3 = partly addresses it, "
    "5 = addresses it fully and directly.",
    "coherence": "Is the answer well-formed, consistent and easy to follow? 1 = incoherent or garbled, "
    "3 = understandable with flaws, 5 = clear and consistent throughout.",
}
JUDGE_SYSTEM = (
    "You are a strict, impartial evaluator of answers written by an AI assistant. Score the answer on each "
    "criterion from 1 (worst) to 5 (best). Reply with only a JSON object mapping each criterion name to an integer score."
)
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def check_rubric(rubric: Mapping[str, str]) -> dict[str, str]:
    """A rubric with valid criterion names (they become metric names ``judge_<name>``)."""
    if not rubric:
        raise ConfigError("the judge rubric is empty", fix="give at least one criterion, e.g. --judge-criteria relevance")
    for name in rubric:
        if not _NAME.match(name):
            raise ConfigError(f"judge criterion {name!r} is not a valid name", fix="use lower-case letters, digits and _ (e.g. helpfulness)")
    return dict(rubric)


def rubric_for(criteria: Sequence[str] | None = None, custom: Mapping[str, str] | None = None) -> dict[str, str]:
    """The rubric to use: ``custom`` descriptions, else the named built-in ``criteria`` (default: all built-ins)."""
    if custom:
        return check_rubric(custom)
    names = list(criteria or DEFAULT_RUBRIC)
    unknown = [c for c in names if c not in DEFAULT_RUBRIC]
    if unknown:
        raise ConfigError(f"no built-in rubric for {', '.join(unknown)}",
                          fix=f"use {', '.join(DEFAULT_RUBRIC)}, or describe your own criteria with --judge-rubric FILE")
    return {c: DEFAULT_RUBRIC[c] for c in names}


def judge_messages(conversation: Sequence[Mapping[str, Any]], answer: str, rubric: Mapping[str, str],
                   reference: str | None = None) -> list[dict[str, str]]:
    """The chat sent to the judge for one answer."""
    convo = "\n".join(f"{m['role']}: {m['content']}" for m in conversation)
    criteria = "\n".join(f"- {name}: {desc}" for name, desc in rubric.items())
    parts = [f"## Conversation\n{convo}", f"## Answer to evaluate\n{answer or '(empty answer)'}"]
    if reference:
        parts.append(f"## Reference answer (for comparison)\n{reference}")
    example = json.dumps({name: 3 for name in rubric})
    parts.append(f"## Criteria\n{criteria}\n\nReply with only a JSON object like {example}.")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def _score(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if 1.0 <= x <= 5.0 else None


def parse_verdict(text: str, criteria: Sequence[str]) -> dict[str, float] | None:
    """Scores per criterion from the judge's reply (a JSON object, or ``name: score`` lines); None if any is missing."""
    found: dict[str, float] = {}
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        try:
            obj = json.loads(text[start : end + 1])
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            lowered = {str(k).strip().lower(): v for k, v in obj.items()}
            for c in criteria:
                s = _score(lowered.get(c))
                if s is not None:
                    found[c] = s
    for c in criteria:
        if c not in found:
            m = re.search(rf"\b{re.escape(c)}\b\W{{0,3}}\s*[:=]?\s*\**\s*(\d+(?:\.\d+)?)", text, re.IGNORECASE)
            s = _score(m.group(1)) if m else None
            if s is not None:
                found[c] = s
    return found if all(c in found for c in criteria) else None


def metric_names(rubric: Mapping[str, str]) -> list[str]:
    return [f"judge_{c}" for c in rubric]
