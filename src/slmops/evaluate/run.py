"""Running an evaluation: answer every example (batched, checkpointed, with progress), then score the answers.

:func:`evaluate` is the library entry point behind the ``eval`` stage and ``slmops eval``. It takes
a :class:`~slmops.evaluate.targets.Target`, the records and an :class:`EvalConfig`, and returns an
:class:`EvalResult` with corpus-level metrics, counts and one sample row per example. Passes that
cost model time (generation, perplexity, judging) go through :func:`run_batched`, which appends
finished rows to a :class:`~slmops.evaluate.checkpoint.Checkpoint` so an interrupted run resumes.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmops import progress
from slmops.errors import ConfigError, DataError, SlmopsError
from slmops.evaluate import jsonmetrics as jm
from slmops.evaluate import metrics as tm
from slmops.evaluate.checkpoint import Checkpoint
from slmops.evaluate.config import EvalConfig, higher_is_better
from slmops.evaluate.targets import RequestFailed, Target
from slmops.settings import slmops_home

if TYPE_CHECKING:
    from slmops.data.records import Record
    from slmops.evaluate.similarity import Embedder
    from slmops.store.artifact import Artifact

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    metrics: dict[str, float | None]
    counts: dict[str, Any]
    samples: list[dict[str, Any]]
    target: dict[str, Any]
    timing: dict[str, Any] = field(default_factory=dict)


def base_sample(index: int, rec: Record) -> dict[str, Any]:
    return {
        "index": index, "id": rec.id, "messages": [m.model_dump(exclude_none=True) for m in rec.prompt_messages],
        "reference": rec.completion, "label": rec.label, "output": None, "error": None, "scores": {},
    }


def check_applicable(cfg: EvalConfig, target: Target, records: Sequence[Record]) -> None:
    """Refuse metrics the data or the target cannot support, naming the flag."""
    if not records:
        raise DataError("no records to evaluate", fix="check --split and --limit")
    has_ref = any(r.completion is not None for r in records)
    for m in cfg.metrics:
        need = {"exact_match": "reference", "token_f1": "reference", "rouge_l": "reference", "bleu": "reference",
                "json_field_match": "reference", "similarity": "reference", "accuracy": "label"}.get(m)
        if need == "reference" and not has_ref:
            raise ConfigError(f"--metrics {m} needs reference answers", why="no record of the split ends with an assistant answer",
                              fix="use a dataset with answers, or metrics that need none (json_valid, judge)")
        if need == "label" and not any(r.label is not None for r in records):
            raise ConfigError("--metrics accuracy needs labels", why="no record of the split has a 'label'",
                              fix="add labels to the data, or use exact_match against the reference answers")
    if "perplexity" in cfg.metrics and target.runtime is None:
        raise ConfigError("--metrics perplexity needs a local runtime", why="an OpenAI-compatible server returns no logits",
                          fix="evaluate the registry reference instead of --url, or drop perplexity")
    if cfg.generates and not any(r.kind != "text" for r in records):
        raise ConfigError("the split holds only text records; there is nothing to answer", fix="use --metrics perplexity for text data")


def run_batched(items: Sequence[tuple[int, Any]], fn: Callable[[int, Any], dict[str, Any]], ckpt: Checkpoint, *,
                label: str, batch_size: int, workers: int = 1) -> dict[int, dict[str, Any]]:
    """Apply ``fn(index, item)`` to every item not yet in ``ckpt``, a batch at a time; return all rows by index."""
    todo = [(i, x) for i, x in items if i not in ckpt]
    errors = 0
    with progress.task(label, total=len(items)) as bar:
        if len(items) > len(todo):
            bar.advance(len(items) - len(todo), resumed=len(items) - len(todo))
        pool = ThreadPoolExecutor(workers) if workers > 1 else None
        try:
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                rows = list(pool.map(lambda ix: fn(*ix), batch)) if pool else [fn(i, x) for i, x in batch]
                ckpt.add_many(rows)
                errors += sum(1 for r in rows if r.get("error"))
                bar.advance(len(rows), errors=errors)
        finally:
            if pool:
                pool.shutdown(wait=True, cancel_futures=True)
    return {i: ckpt.rows[i] for i, _ in items if i in ckpt}


def _answer(target: Target, cfg: EvalConfig) -> Callable[[int, list[dict[str, Any]]], dict[str, Any]]:
    def run(index: int, messages: list[dict[str, Any]]) -> dict[str, Any]:
        try:
            r = target.chat(messages, max_tokens=cfg.max_tokens, temperature=cfg.temperature, stop=cfg.stop, seed=cfg.seed)
        except SlmopsError as exc:
            return {"index": index, "output": "", "error": exc.message, "status": getattr(exc, "status", None)}
        return {"index": index, "output": r.text, "error": None, "latency_s": r.latency_s, "ttft_s": r.ttft_s,
                "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens, "finish_reason": r.finish_reason}

    return run


def score_sample(s: dict[str, Any], cfg: EvalConfig) -> dict[str, float]:
    """Every cheap metric of one answered sample (model-based ones are added by their own pass)."""
    out, ref, label, ms = s["output"], s["reference"], s["label"], set(cfg.metrics)
    sc: dict[str, float] = {}
    if out is None:
        return sc
    if ref is not None:
        for name, fn in (("exact_match", tm.exact_match), ("token_f1", tm.token_f1), ("rouge_l", tm.rouge_l), ("bleu", tm.sentence_bleu)):
            if name in ms:
                sc[name] = fn(out, ref)
        if "json_field_match" in ms:
            v = jm.json_field_match(out, ref, schema=cfg.json_schema, fields=cfg.json_fields)
            if v is not None:
                sc["json_field_match"] = v
    if "accuracy" in ms and label is not None:
        sc["accuracy"] = tm.accuracy(out, label)
    if "json_valid" in ms:
        sc["json_valid"] = jm.json_valid(out)
    if "json_schema" in ms and cfg.json_schema:
        sc["json_schema"] = jm.json_schema_valid(out, cfg.json_schema)
    return sc


def retention_pct(metrics: dict[str, Any], ref_metrics: dict[str, Any]) -> dict[str, float]:
    """Each metric as a percentage of the reference's (inverted for lower-is-better metrics such as perplexity)."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        r = ref_metrics.get(k)
        if not isinstance(v, int | float) or not isinstance(r, int | float) or isinstance(v, bool):
            continue
        if higher_is_better(k) and r:
            out[k] = 100.0 * v / r
        elif not higher_is_better(k) and v:
            out[k] = 100.0 * r / v
    return out


def evaluate(target: Target, records: Sequence[Record], cfg: EvalConfig, *, workdir: Path | None = None,
             embedder: Embedder | None = None, judge: Target | None = None, model: Artifact | None = None) -> EvalResult:
    """Answer and score ``records`` on ``target``; ``workdir`` holds resumable progress (None: in memory only).

    With ``cfg.executor == "ray"`` the answers come from Ray actors (:mod:`slmops.evaluate.sharded`), each
    opening its own target from ``cfg.url`` or ``model`` (the artifact behind a local target).
    """
    check_applicable(cfg, target, records)
    described = target.describe()  # for a URL: fails fast when the server is unreachable
    t0 = time.perf_counter()
    samples = [base_sample(i, r) for i, r in enumerate(records)]
    ck = (lambda name: Checkpoint(workdir / f"{name}.jsonl" if workdir else None))
    resumed = 0
    if cfg.generates:
        todo = [(s["index"], s["messages"]) for s, r in zip(samples, records, strict=True) if r.kind != "text"]
        gen_ckpt = ck("generate")
        resumed = sum(1 for i, _ in todo if i in gen_ckpt)
        if cfg.executor == "ray":
            from slmops.evaluate.sharded import answer_sharded
            from slmops.finetune.runs import store_home_of

            home = store_home_of(workdir) if workdir else slmops_home()
            rows = answer_sharded(todo, cfg, gen_ckpt, model=model, store_home=home, label=f"eval {target.label}")
        else:
            rows = run_batched(todo, _answer(target, cfg), gen_ckpt, label=f"eval {target.label}", batch_size=cfg.batch_size,
                               workers=target.concurrency)
        for i, row in rows.items():
            samples[i].update({k: v for k, v in row.items() if k != "index"})
        if todo and all(samples[i]["error"] for i, _ in todo):
            first = samples[todo[0][0]]["error"]
            raise RequestFailed(f"every one of {len(todo)} request(s) failed", why=first, fix="check the target (see --verbose)")
    for s in samples:
        s["scores"] = score_sample(s, cfg)
    extra_counts: dict[str, Any] = {}
    corpus: dict[str, float | None] = {}
    if "perplexity" in cfg.metrics:
        corpus["perplexity"] = _perplexity_pass(target, records, samples, cfg, ck("perplexity"))
    if "similarity" in cfg.metrics:
        _similarity_pass(samples, cfg, embedder)
    if "judge" in cfg.metrics:
        extra_counts["judge_unparsed"] = _judge_pass(samples, cfg, judge, ck("judge"))
    if "bleu" in cfg.metrics:
        pairs = [(s["output"], s["reference"]) for s in samples if s["output"] is not None and s["reference"] is not None]
        corpus["bleu"] = tm.corpus_bleu([p for p, _ in pairs], [r for _, r in pairs]) if pairs else None
    names = sorted({k for s in samples for k in s["scores"]} | set(corpus))
    metrics: dict[str, float | None] = {}
    for name in names:
        metrics[name] = corpus[name] if name in corpus else tm.mean([s["scores"][name] for s in samples if name in s["scores"]])
    for name in _requested_names(cfg):  # asked for but nothing could be scored (e.g. no JSON references): None, not missing
        metrics.setdefault(name, None)
    answered = [s for s in samples if s["output"] is not None]
    latencies = [s["latency_s"] for s in answered if s.get("latency_s") is not None]
    counts = {
        "examples": len(samples), "answered": len(answered), "errors": sum(1 for s in samples if s["error"]), "resumed": resumed,
        "scored": {n: sum(1 for s in samples if n in s["scores"]) for n in names}, **extra_counts,
    }
    timing = {"wall_s": time.perf_counter() - t0,
              "latency_mean_s": statistics.fmean(latencies) if latencies else None,
              "latency_p50_s": statistics.median(latencies) if latencies else None}
    return EvalResult(metrics, counts, samples, described, timing)


def _requested_names(cfg: EvalConfig) -> list[str]:
    from slmops.evaluate.judge import metric_names, rubric_for

    out = [m for m in cfg.metrics if m != "judge"]
    if "judge" in cfg.metrics:
        out += metric_names(rubric_for(cfg.judge_criteria, cfg.judge_rubric))
    return out


def _perplexity_pass(target: Target, records: Sequence[Record], samples: list[dict[str, Any]], cfg: EvalConfig, ckpt: Checkpoint) -> float | None:
    from slmops.evaluate.perplexity import NLL, record_nll

    rt = target.runtime
    assert rt is not None

    def one(index: int, rec: Record) -> dict[str, Any]:
        try:
            n = record_nll(rt, rec, window=cfg.perplexity_window)
        except SlmopsError as exc:
            return {"index": index, "nll": None, "tokens": 0, "error": exc.message}
        return {"index": index, "nll": n.total if n else None, "tokens": n.tokens if n else 0, "error": None}

    rows = run_batched(list(enumerate(records)), one, ckpt, label="perplexity", batch_size=cfg.batch_size)
    total = NLL()
    for i, row in rows.items():
        if row.get("nll") is not None and row["tokens"]:
            part = NLL(row["nll"], row["tokens"])
            total = total + part
            samples[i]["scores"]["perplexity"] = part.perplexity
    return total.perplexity


def _similarity_pass(samples: list[dict[str, Any]], cfg: EvalConfig, embedder: Embedder | None) -> None:
    from slmops.evaluate.similarity import TransformersEmbedder, similarities

    todo = [s for s in samples if s["output"] is not None and s["reference"] is not None]
    if not todo:
        return
    emb = embedder or TransformersEmbedder(cfg.embedding_model)
    with progress.task("similarity", total=len(todo)) as bar:
        for start in range(0, len(todo), 64):
            part = todo[start : start + 64]
            for s, v in zip(part, similarities(emb, [s["output"] for s in part], [s["reference"] for s in part]), strict=True):
                s["scores"]["similarity"] = v
            bar.advance(len(part))


def _judge_pass(samples: list[dict[str, Any]], cfg: EvalConfig, judge: Target | None, ckpt: Checkpoint) -> int:
    from slmops.evaluate.judge import judge_messages, parse_verdict, rubric_for
    from slmops.evaluate.targets import HttpTarget
    from slmops.settings import api_key_from_env

    rubric = rubric_for(cfg.judge_criteria, cfg.judge_rubric)
    own = judge is None
    if judge is None:
        assert cfg.judge_url
        judge = HttpTarget(cfg.judge_url, cfg.judge_model, api_key=api_key_from_env(cfg.judge_api_key_env, "--judge-api-key-env"),
                           timeout=cfg.request_timeout_s, concurrency=cfg.batch_size)
    jt = judge

    def one(index: int, s: dict[str, Any]) -> dict[str, Any]:
        msgs = judge_messages(s["messages"], s["output"] or "", rubric, s["reference"])
        try:
            reply = jt.chat(msgs, max_tokens=128, temperature=0.0)
        except SlmopsError as exc:
            return {"index": index, "verdict": None, "raw": None, "error": exc.message}
        return {"index": index, "verdict": parse_verdict(reply.text, list(rubric)), "raw": reply.text[:500], "error": None}

    try:
        todo = [(s["index"], s) for s in samples if s["output"] is not None]
        rows = run_batched(todo, one, ckpt, label="judge", batch_size=cfg.batch_size, workers=jt.concurrency)
    finally:
        if own:
            jt.close()
    unparsed = 0
    for i, row in rows.items():
        if row.get("verdict"):
            for c, v in row["verdict"].items():
                samples[i]["scores"][f"judge_{c}"] = v
        else:
            unparsed += 1
            samples[i]["judge_raw"] = row.get("raw") or row.get("error")
    if todo and unparsed == len(todo):
        log.warning("the judge gave no usable verdict for any of %d answers (first: %s)", len(todo), rows[todo[0][0]])
    return unparsed
