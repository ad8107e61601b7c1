"""What the teacher is asked, and what of its answer becomes the training target.

* Task types (``conversation``, ``qa``, ``classification``, ``extraction``, ``summarization``,
  ``math``) decide the checks an answer gets (JSON for extraction, a known label for
  classification, a number for math) and how it is cleaned (a Markdown fence around JSON goes, a
  label is written as the dataset spells it).
* Chain-of-thought mode adds :data:`COT_INSTRUCTION` to the system prompt *sent to the teacher*;
  the teacher reasons, and only what follows its last ``Final answer:`` is kept as the target
  (the reasoning stays in the record's ``meta`` for inspection). The student's training example
  keeps the original system prompt, so it learns to answer directly.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from slmops.data.records import Record

TaskType = Literal["conversation", "qa", "classification", "extraction", "summarization", "math"]
TASK_TYPES: tuple[str, ...] = ("conversation", "qa", "classification", "extraction", "summarization", "math")
COT_INSTRUCTION = (
    "Think step by step and write your reasoning first. Then write the final answer alone on the last line, starting with 'Final answer:'."
)
_FINAL = re.compile(r"final\s+answer\s*[:：]\s*", re.IGNORECASE)
_FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?```$", re.DOTALL)
_NUMBER = re.compile(r"^[-+]?\$?\d[\d,]*(\.\d+)?%?$")


def prompt_messages(record: Record, system_prompt: str | None) -> list[dict[str, str]]:
    """The conversation to send (a final assistant turn dropped); ``system_prompt`` replaces any system message."""
    if record.kind == "text":
        msgs = [{"role": "user", "content": record.text or ""}]
    else:
        msgs = [{"role": m.role, "content": m.content} for m in record.prompt_messages]
    if system_prompt is not None:
        msgs = [{"role": "system", "content": system_prompt}] + [m for m in msgs if m["role"] != "system"]
    return msgs


def teacher_messages(messages: list[dict[str, str]], *, chain_of_thought: bool) -> list[dict[str, str]]:
    """The messages as sent to the teacher: with chain of thought, the CoT instruction joins the system prompt."""
    if not chain_of_thought:
        return messages
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{messages[0]['content']}\n\n{COT_INSTRUCTION}"}, *messages[1:]]
    return [{"role": "system", "content": COT_INSTRUCTION}, *messages]


def split_final_answer(text: str) -> tuple[str | None, str]:
    """``(final answer or None, reasoning)`` from a chain-of-thought answer (the last ``Final answer:`` wins)."""
    matches = list(_FINAL.finditer(text))
    if not matches:
        return None, text
    last = matches[-1]
    return text[last.end() :].strip(), text[: last.start()].strip()


def strip_fence(text: str) -> str:
    """The body of a Markdown code fence (```json … ```), or the text unchanged."""
    m = _FENCE.match(text.strip())
    return m.group(1).strip() if m else text


def is_number(text: str) -> bool:
    return bool(_NUMBER.match(text.strip()))


def clean_answer(text: str, task: str, labels: dict[str, str] | None = None) -> str:
    """The answer as it will be trained on: fences removed for extraction, labels in the dataset's spelling."""
    if task == "extraction":
        return strip_fence(text).strip()
    if task == "classification" and labels:
        from slmops.evaluate.metrics import normalize_label

        return labels.get(normalize_label(text), text.strip())
    return text


def label_map(records: list[Record], given: list[str] | None) -> dict[str, str]:
    """normalised label → label as written, from ``given`` or else every label the prompts carry."""
    from slmops.evaluate.metrics import normalize_label

    labels: list[Any] = list(given) if given else [r.label for r in records if r.label is not None]
    return {normalize_label(x): str(x) for x in labels}
