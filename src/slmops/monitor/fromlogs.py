"""The feedback loop: logged traffic (served with ``--log-content``) becomes a prompt dataset.

``data.from_logs`` reads the request log, keeps the successful requests answered by one model
artifact (its digest), scrubs personal data (emails, phone numbers, card-like numbers and any user
regexes) *before* anything is written, and writes records of kind ``prompt`` — the input for the
next ``distill generate``. The dataset's parent (role ``model``) is the served model. The stage's
fingerprint covers the selected log rows, so new traffic misses the cache.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from slmops.data.records import SCHEMA, Record, parse_record
from slmops.errors import ConfigError, DataError
from slmops.monitor import requestlog
from slmops.stage import StageContext, StageOutput, stage
from slmops.store.artifact import Artifact

#: Built-in scrub patterns: name → regex. Applied before any user pattern.
BUILTIN_SCRUB: dict[str, str] = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    "card": r"\b(?:\d[ -]?){12,18}\d\b",
    "phone": r"(?<![\w])\+?\d{1,3}?[ .-]?\(?\d{2,4}\)?[ .-]?\d{3,4}[ .-]?\d{3,4}(?![\w])",
}
_SCRUB_ORDER = ("email", "card", "phone")


class FromLogsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    log_path: str = Field(description="The request log (SQLite, written by slmops serve)")
    model_digest: str = Field(description="Digest of the served model whose traffic is taken (set from the model input)")
    since_s: float | None = Field(None, gt=0, description="Only requests from the last this many seconds (None = all)")
    min_judge_score: float | None = Field(None, description="Only requests a judge scored at least this (slmops monitor sample)")
    scrub: list[str] = Field(default_factory=list, description="Extra regexes whose matches are replaced by [REDACTED]")
    builtin_scrub: bool = Field(True, description="Scrub emails, phone numbers and card-like numbers")
    dedup: bool = Field(True, description="Keep one record per distinct (scrubbed) prompt")


def compile_scrubbers(extra: list[str], *, builtin: bool = True) -> list[tuple[str, re.Pattern[str]]]:
    """Compiled (name, regex) pairs; a bad user regex is a ConfigError naming it."""
    out = [(n, re.compile(BUILTIN_SCRUB[n])) for n in _SCRUB_ORDER] if builtin else []
    for i, pat in enumerate(extra):
        try:
            out.append((f"user{i}", re.compile(pat)))
        except re.error as exc:
            raise ConfigError(f"--scrub {pat!r} is not a valid regular expression", why=str(exc), fix="check the pattern (Python re syntax)") from exc
    return out


def scrub_text(text: str, scrubbers: list[tuple[str, re.Pattern[str]]], counts: dict[str, int] | None = None) -> str:
    """Replace every match of every scrubber with ``[EMAIL]``/``[PHONE]``/``[CARD]``/``[REDACTED]``."""
    for name, rx in scrubbers:
        token = f"[{name.upper()}]" if name in BUILTIN_SCRUB else "[REDACTED]"
        text, n = rx.subn(token, text)
        if counts is not None and n:
            counts[name] = counts.get(name, 0) + n
    return text


def select_rows(cfg: FromLogsConfig, *, now: float | None = None) -> list[dict[str, Any]]:
    """The log rows ``cfg`` selects (oldest first): status 200, this model's digest, content logged."""
    path = Path(cfg.log_path)
    if not path.is_file():
        raise DataError(f"no request log at {path}", why="the server has not logged anything there",
                        fix="serve the model with --log-content (or pass --log-db)")
    if cfg.min_judge_score is not None and not requestlog.has_judge_scores(path):
        raise DataError("--min-judge-score: no request has a judge score yet",
                        fix="run `slmops monitor sample --judge URL` first, or drop --min-judge-score")
    since = (now or time.time()) - cfg.since_s if cfg.since_s is not None else None
    return requestlog.requests_of(path, cfg.model_digest, since=since, min_judge_score=cfg.min_judge_score)


def _fingerprint(cfg: FromLogsConfig) -> str:
    rows = select_rows(cfg)
    h = hashlib.sha256()
    for r in rows:
        h.update(f"{r['id']}:{r['ts']!r}\n".encode())
    return h.hexdigest()


def _messages(route: str, prompt: str) -> list[dict[str, str]] | None:
    """The logged prompt as chat messages (chat: the JSON list; completions: a user turn per string)."""
    value = requestlog.decode_prompt(prompt)
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        msgs = [{"role": str(m.get("role")), "content": str(m.get("content") or "")} for m in value]
        while msgs and msgs[-1]["role"] == "assistant":
            msgs.pop()
        return [m for m in msgs if m["content"].strip() and m["role"] in ("system", "user", "assistant")] or None
    if isinstance(value, list) and value and isinstance(value[0], str):
        value = value[0]
    if isinstance(value, str) and value.strip():
        return [{"role": "user", "content": value}]
    return None  # token ids: nothing to learn from


@stage("data.from_logs", config=FromLogsConfig, kind="dataset", format="jsonl", inputs=("model",), fingerprint=_fingerprint)
def from_logs(inputs: dict[str, Artifact], cfg: FromLogsConfig, ctx: StageContext) -> StageOutput:
    """Turn logged prompts of a served model into a scrubbed prompt dataset."""
    from slmops.data.io import write_jsonl

    if inputs["model"].digest != cfg.model_digest:
        raise ConfigError("data.from_logs: model_digest differs from the model input", fix="leave model_digest to build_from_logs")
    rows = select_rows(cfg)
    scrubbers = compile_scrubbers(cfg.scrub, builtin=cfg.builtin_scrub)
    counts: dict[str, int] = {}
    records: list[Record] = []
    seen: set[str] = set()
    skipped = 0
    for row in rows:
        msgs = _messages(row["route"], row["prompt"])
        if not msgs:
            skipped += 1
            continue
        msgs = [{**m, "content": scrub_text(m["content"], scrubbers, counts)} for m in msgs]
        key = json.dumps(msgs, ensure_ascii=False, sort_keys=True)
        if cfg.dedup and key in seen:
            continue
        seen.add(key)
        records.append(parse_record({"kind": "prompt", "id": f"log-{row['id']}", "label": None, "messages": msgs, "text": None,
                                     "meta": {"source": "request-log", "route": row["route"]}}, kind="prompt"))
    if not records:
        raise DataError("no logged prompts to build a dataset from",
                        why=f"{len(rows)} matching request(s) in the log, none with usable text content",
                        fix="serve with --log-content, send traffic, or widen --since")
    write_jsonl(records, ctx.out / "data.jsonl")
    return StageOutput(metrics={"records": len(records), "log_rows": len(rows), "skipped": skipped, "scrubbed": sum(counts.values())},
                       meta={"schema": SCHEMA, "kinds": {"prompt": len(records)}, "source": "request-log", "scrubbed": counts})


def build_from_logs(model: Artifact, *, store: Any, log_path: Path | None = None, since_s: float | None = None,
                    min_judge_score: float | None = None, scrub: list[str] | None = None, name: str | None = None) -> Any:
    """Library entry point: run ``data.from_logs`` for ``model``'s logged traffic; returns the RunResult."""
    from slmops.stage.runner import run_stage

    compile_scrubbers(scrub or [])  # fail on a bad regex before touching the log
    cfg = FromLogsConfig(log_path=str(log_path or requestlog.default_path(store.home)), model_digest=model.digest, since_s=since_s,
                         min_judge_score=min_judge_score, scrub=list(scrub or []))
    return run_stage("data.from_logs", {"model": model}, cfg, store=store, output_name=name)
