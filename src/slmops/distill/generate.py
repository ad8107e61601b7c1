"""Stage 1's loop: every (prompt, sample) is asked once, its answer appended to disk the moment it arrives.

The work file ``$SLMOPS_HOME/runs/<cache key>/answers.jsonl`` holds one JSON line per answered
request, keyed ``split/index/sample``. Each line is flushed and fsynced before the next answer is
taken, and a line torn by a kill is cut off when the file is opened again. The cache key covers
the prompts, the teacher and every result-changing setting, so running the same command again
finds the same file and asks only for what is missing: nothing is asked twice, nothing is lost.
A lock file keeps two processes off the same run.

When every request has an answer (or failed for good, within ``min_success_ratio``), the answers
are checked (:mod:`.validate`) and written as the dataset: ``<split>.jsonl`` chat records (the
prompt's messages plus the teacher's answer; label and meta kept; teacher facts under
``meta.teacher``), ``topk/<split>.jsonl`` (compact top-k logprobs by row, when the teacher gave
them), ``validation_report.json`` and ``dropped.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmops import progress
from slmops.data.io import dataset_splits, read_dataset, write_jsonl
from slmops.data.records import Record
from slmops.distill.config import GenerateConfig
from slmops.distill.prompting import clean_answer, label_map, prompt_messages, split_final_answer, teacher_messages
from slmops.distill.teachers import Result, Sampling, Teacher, TeacherReply, TeacherRequest
from slmops.distill.validate import ValidationReport, Validator
from slmops.errors import ConfigError, DataError, SlmopsError
from slmops.stage import StageOutput
from slmops.store.artifact import Artifact
from slmops.store.locks import run_lock

log = logging.getLogger(__name__)
WORK_FILE = "answers.jsonl"


@dataclass(frozen=True)
class Planned:
    split: str
    index: int
    record: Record
    messages: list[dict[str, str]]  # what the student sees (system prompt applied)
    request: TeacherRequest

    @property
    def key(self) -> str:
        return self.request.key


def plan_requests(prompts: Artifact, cfg: GenerateConfig) -> list[Planned]:
    """Every (split, prompt, sample) to ask, in a stable order."""
    splits = cfg.splits or dataset_splits(prompts)
    plan: list[Planned] = []
    for split in splits:
        records = read_dataset(prompts, split)
        for i, rec in enumerate(records[: cfg.limit] if cfg.limit else records):
            msgs = prompt_messages(rec, cfg.system_prompt)
            asked = teacher_messages(msgs, chain_of_thought=cfg.chain_of_thought)
            for s in range(cfg.samples):
                plan.append(Planned(split, i, rec, msgs, TeacherRequest(f"{split}/{i}/{s}", asked, s, cfg.seed + s)))
    if not plan:
        raise DataError("the prompts dataset has no prompts to answer", fix="check --splits and the dataset's contents")
    return plan


class WorkFile:
    """An append-only JSON Lines file of answers; opening it drops a torn last line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, dict[str, Any]]:
        done: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return done
        good = 0
        with open(self.path, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break
                try:
                    entry = json.loads(raw)
                except ValueError:
                    break
                done.setdefault(entry["key"], entry)
                good += len(raw)
        if good != self.path.stat().st_size:
            log.warning(
                "%s: cutting off a torn last line (%d bytes) left by an interrupted run", self.path, self.path.stat().st_size - good
            )
            with open(self.path, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())
        return done

    @contextlib.contextmanager
    def appender(self) -> Iterator[Any]:
        with open(self.path, "a", encoding="utf-8") as f:

            def append(entry: dict[str, Any]) -> None:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())

            yield append


def make_teacher(cfg: GenerateConfig, teacher: Artifact | None, cache_root: Path) -> Teacher:
    sampling = Sampling(cfg.max_tokens, cfg.temperature, cfg.top_p, cfg.top_logprobs)
    if teacher is not None:
        from slmops.distill.teachers import LocalTeacher

        return LocalTeacher(teacher, sampling, batch_size=cfg.batch_size, seed=cfg.seed)
    from slmops.distill.cache import ResponseCache
    from slmops.distill.http_teacher import HttpTeacher
    from slmops.settings import api_key_from_env

    assert cfg.base_url and cfg.model
    return HttpTeacher(
        base_url=cfg.base_url,
        model=cfg.model,
        sampling=sampling,
        api_key=api_key_from_env(cfg.api_key_env),
        api_key_header=cfg.api_key_header,
        concurrency=cfg.concurrency,
        rpm=cfg.rpm,
        timeout_s=cfg.timeout_s,
        max_retries=cfg.max_retries,
        backoff_base_s=cfg.backoff_base_s,
        backoff_max_s=cfg.backoff_max_s,
        cache=ResponseCache(cache_root, enabled=cfg.cache),
        price_prompt_per_1m=cfg.price_prompt_per_1m,
        price_completion_per_1m=cfg.price_completion_per_1m,
    )


def ask_teacher(
    plan: list[Planned], cfg: GenerateConfig, work_dir: Path, *, teacher: Artifact | None, cache_root: Path
) -> tuple[dict[str, dict[str, Any]], dict[str, str], dict[str, Any]]:
    """Answer what the work file lacks; returns (answers by key, failures by key, this process's teacher stats)."""
    work = WorkFile(work_dir / WORK_FILE)
    done = work.load()
    pending = [p for p in plan if p.key not in done]
    failures: dict[str, str] = {}
    stats: dict[str, Any] = {}
    if done:
        log.info("distill.generate: resuming, %d of %d answers already on disk", len(done), len(plan))
    if not pending:
        return done, failures, stats
    t = make_teacher(cfg, teacher, cache_root) if cfg.executor == "local" else None
    try:
        with progress.task("teacher answers", total=len(plan)) as bar, work.appender() as append:
            bar.set(len(plan) - len(pending))

            def on_result(req: TeacherRequest, res: Result) -> None:
                if isinstance(res, TeacherReply):
                    entry = {"key": req.key, **res.to_dict()}
                    append(entry)
                    done[req.key] = entry
                else:
                    failures[req.key] = res.error
                bar.advance(1, failed=len(failures))

            if t is None:  # --executor ray: shards on Ray actors, answers appended here as they arrive
                from slmops.distill.sharded import ask_sharded

                stats = ask_sharded([p.request for p in pending], cfg, teacher, cache_root, work_dir.parents[1], on_result)
            else:
                t.run([p.request for p in pending], on_result)
                stats = t.stats()
    finally:
        if t is not None:
            t.close()
    return done, failures, stats


def build_dataset(
    plan: list[Planned], done: dict[str, dict[str, Any]], cfg: GenerateConfig, out: Path
) -> tuple[ValidationReport, dict[str, int]]:
    """Validate the answers and write the dataset files into ``out``."""
    report = ValidationReport()
    labels = label_map([p.record for p in plan if p.request.sample == 0], cfg.validation.labels) if cfg.task == "classification" else {}
    validator = Validator(cfg.validation, task=cfg.task, labels=labels)
    rows: dict[str, list[Record]] = {}
    topk: dict[str, list[dict[str, Any]]] = {}
    dropped: list[dict[str, Any]] = []
    for p in plan:
        entry = done.get(p.key)
        if entry is None:
            report.add(p.split, p.key, "failed")
            dropped.append({"key": p.key, "reason": "failed", "answer": None})
            continue
        reply = TeacherReply.from_dict(entry)
        raw, reasoning, reason = reply.text, None, None
        answer = raw
        if cfg.chain_of_thought and not (cfg.validation.drop_truncated and reply.finish_reason == "length"):
            final, reasoning = split_final_answer(raw)
            reason = "refusal" if validator.is_refusal(raw) else "no_final_answer" if final is None else None
            answer = final or ""
        if reason is None:
            answer = clean_answer(answer, cfg.task, labels)
            reason = validator.check(answer, prompt=json.dumps(p.messages), finish_reason=reply.finish_reason)
        report.add(p.split, p.key, reason, raw)
        if reason is not None:
            dropped.append({"key": p.key, "reason": reason, "answer": raw[:1000]})
            continue
        base = p.record.id if p.record.id is not None else f"{p.split}-{p.index}"
        rid = base if cfg.samples == 1 else f"{base}#{p.request.sample}"
        teacher_meta: dict[str, Any] = {"sample": p.request.sample, "finish_reason": reply.finish_reason, "key": p.key}
        if reasoning is not None:
            teacher_meta["reasoning"] = reasoning
        split_rows = rows.setdefault(p.split, [])
        if reply.logprobs and answer == raw:
            topk.setdefault(p.split, []).append({"row": len(split_rows), "id": rid, **reply.logprobs})
        split_rows.append(
            Record(
                kind="chat",
                id=rid,
                # a classification prompt without a label is labelled by the teacher's (validated) answer
                label=p.record.label if p.record.label is not None or cfg.task != "classification" else answer,
                messages=[*p.messages, {"role": "assistant", "content": answer}],  # type: ignore[list-item]
                meta={**p.record.meta, "teacher": teacher_meta},
            )
        )
    if not rows:
        raise DataError(
            f"no teacher answer passed validation ({report.total} checked)",
            why=", ".join(f"{k}: {v}" for k, v in report.dropped.most_common())
            + "".join(f"; e.g. {k}: {ex[0]['answer'][:80]!r}" for k, ex in report.examples.items() if ex and ex[0]["answer"]),
            fix="raise --max-tokens, loosen the checks (--keep-truncated, --keep-refusals, --min-chars, --label) or fix the prompts",
        )
    counts = {split: write_jsonl(recs, out / f"{split}.jsonl") for split, recs in rows.items()}
    if topk:
        (out / "topk").mkdir()
        for split, items in topk.items():
            write_jsonl(items, out / "topk" / f"{split}.jsonl")
    (out / "validation_report.json").write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_jsonl(dropped, out / "dropped.jsonl")
    return report, counts


def usage_of(done: dict[str, dict[str, Any]], cfg: GenerateConfig) -> dict[str, Any]:
    """Token usage over every answer of the run (all processes), and its cost when prices are given."""
    c: Counter[str] = Counter()
    for e in done.values():
        c["prompt_tokens"] += int(e.get("prompt_tokens") or 0)
        c["completion_tokens"] += int(e.get("completion_tokens") or 0)
        if not e.get("cached"):
            c["billed_prompt_tokens"] += int(e.get("prompt_tokens") or 0)
            c["billed_completion_tokens"] += int(e.get("completion_tokens") or 0)
        c["cached_answers"] += bool(e.get("cached"))
    out: dict[str, Any] = dict(c)
    if cfg.price_prompt_per_1m is not None or cfg.price_completion_per_1m is not None:
        out["cost_usd"] = round(
            c["billed_prompt_tokens"] * (cfg.price_prompt_per_1m or 0) / 1e6
            + c["billed_completion_tokens"] * (cfg.price_completion_per_1m or 0) / 1e6,
            6,
        )
    return out


def generate(
    prompts: Artifact, cfg: GenerateConfig, out: Path, *, teacher: Artifact | None, work_dir: Path, cache_root: Path
) -> StageOutput:
    """Run stage 1 end to end (see the module docstring); resumable through ``work_dir``."""
    if teacher is None and not cfg.base_url:
        raise ConfigError(
            "distill generate needs a teacher", fix="pass --teacher MODEL (a local model) or --base-url URL --model NAME (an endpoint)"
        )
    if teacher is not None and cfg.base_url:
        raise ConfigError("give one teacher: a local --teacher model or an endpoint --base-url, not both", fix="drop one of them")
    plan = plan_requests(prompts, cfg)
    if cfg.samples > 1 and cfg.temperature == 0:
        log.warning("--samples %d with --temperature 0: greedy answers repeat, and duplicates are dropped", cfg.samples)
    with run_lock(work_dir, activity="generating this exact run",
                  fix="wait for it to finish or stop it; running the command again then continues where it stopped"):
        done, failures, stats = ask_teacher(plan, cfg, work_dir, teacher=teacher, cache_root=cache_root)
        answered = sum(1 for p in plan if p.key in done)
        ratio = answered / len(plan)
        if ratio < cfg.min_success_ratio:
            kinds = Counter(failures.values()).most_common(3)
            raise SlmopsError(
                f"the teacher answered {answered} of {len(plan)} requests ({ratio:.1%}), below --min-success-ratio {cfg.min_success_ratio:g}",
                why="; ".join(f"{k} ×{n}" for k, n in kinds) or "requests failed",
                fix="run the same command again to retry only the missing ones (the answers so far are kept), or lower --min-success-ratio",
            )
        report, counts = build_dataset(plan, done, cfg, out)
    if not cfg.keep_work:
        shutil.rmtree(work_dir, ignore_errors=True)
    dropped = report.to_dict()["dropped_by_reason"]
    metrics: dict[str, Any] = {
        "prompts": len({(p.split, p.index) for p in plan}),
        "requests": len(plan),
        "answered": answered,
        "failed": len(plan) - answered,
        "success_ratio": round(ratio, 4),
        "kept": report.kept,
        "dropped": sum(dropped.values()),
        **{f"dropped_{k}": v for k, v in dropped.items()},
        **counts,
        **usage_of(done, cfg),
    }
    desc = (
        {"type": "local", "digest": teacher.digest}
        if teacher is not None
        else {"type": "http", "base_url": cfg.base_url, "model": cfg.model}
    )
    meta = {
        "teacher": desc,
        "task": cfg.task,
        "run_options": cfg.run_options(),
        "last_process": stats,
        "topk": bool(cfg.top_logprobs),
        "source": "distill.generate",
    }
    return StageOutput(metrics=metrics, meta=meta)
