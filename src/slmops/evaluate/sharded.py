"""The answering pass of an evaluation sharded over Ray actors (``eval --executor ray --workers N``).

The examples still to answer are cut into N contiguous shards, one per actor; each actor opens its
own target (a pool of HTTP clients to ``--url``, or the local model, pulled from the default remote
when workers do not see the store) and answers its shard a batch at a time. Every answered batch
comes back to the driver, which adds it to the evaluation's checkpoint before asking for the next,
so progress is per shard and an interrupted run resumes with what is missing. Rows are keyed by the
example's index, so scoring sees the same samples in the same order as a local run.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from slmops import progress
from slmops.errors import ConfigError
from slmops.evaluate.checkpoint import Checkpoint
from slmops.evaluate.config import EVAL_BATCH_SIZE, EVAL_TIMEOUT_S, EvalConfig
from slmops.stage import RunOptions
from slmops.stage.shards import artifact_on_worker, artifact_source, run_sharded
from slmops.store.artifact import Artifact
from slmops.store.registry import Store


class EvalShard:
    """One Ray actor: a target of its own, answering batches of (index, messages)."""

    def __init__(self, cfg: EvalConfig, opts: RunOptions, model: dict[str, Any] | None) -> None:
        from slmops.evaluate.run import _answer
        from slmops.evaluate.targets import open_target

        art = artifact_on_worker(model) if model else None
        self.target = open_target(art, url=cfg.url, model_name=cfg.model_name, api_key_env=cfg.api_key_env, runtime=cfg.runtime,
                                  timeout=opts.timeout(EVAL_TIMEOUT_S), concurrency=opts.batch(EVAL_BATCH_SIZE))
        self.fn = _answer(self.target, cfg)
        workers = getattr(self.target, "concurrency", 1)
        self.pool = ThreadPoolExecutor(workers) if workers > 1 else None

    def process(self, batch: list[tuple[int, Any]]) -> list[dict[str, Any]]:
        if self.pool:
            return list(self.pool.map(lambda ix: self.fn(*ix), batch))
        return [self.fn(i, x) for i, x in batch]

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown(wait=False)
        self.target.close()


def answer_sharded(items: Sequence[tuple[int, Any]], cfg: EvalConfig, opts: RunOptions, ckpt: Checkpoint, *, model: Artifact | None,
                   store: Store | None, label: str) -> dict[int, dict[str, Any]]:
    """Answer every item not yet in ``ckpt`` on ``opts.workers`` Ray actors; return all rows by index."""
    if (model is None or store is None) and cfg.url is None:
        raise ConfigError("--executor ray needs the model artifact (and its store) or --url to open the target on each worker")
    todo = [(i, x) for i, x in items if i not in ckpt]
    errors = 0
    with progress.task(label, total=len(items)) as bar:
        if len(items) > len(todo):
            bar.advance(len(items) - len(todo), resumed=len(items) - len(todo))

        def handle(rows: list[dict[str, Any]]) -> int:
            nonlocal errors
            ckpt.add_many(rows)
            errors += sum(1 for r in rows if r.get("error"))
            bar.advance(len(rows), errors=errors)
            return len(rows)

        if todo:
            src = artifact_source(model, store) if model is not None and store is not None else None
            run_sharded(todo, workers=opts.workers, chunk=opts.batch(EVAL_BATCH_SIZE), actor=EvalShard, args=(cfg, opts, src),
                        num_cpus=1 if model is not None else 0.25, address=opts.ray_address, on_result=handle, label="eval")
    return {i: ckpt.rows[i] for i, _ in items if i in ckpt}
