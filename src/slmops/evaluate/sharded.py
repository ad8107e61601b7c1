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
from pathlib import Path
from typing import Any

from slmops import progress
from slmops.distill.sharded import shards
from slmops.errors import ConfigError
from slmops.evaluate.checkpoint import Checkpoint
from slmops.evaluate.config import EvalConfig
from slmops.pipeline.ray_worker import artifact_on_worker, artifact_source
from slmops.store.artifact import Artifact


class EvalShard:
    """One Ray actor: a target of its own, answering batches of (index, messages)."""

    def __init__(self, cfg: EvalConfig, model: dict[str, Any] | None) -> None:
        from slmops.evaluate.run import _answer
        from slmops.evaluate.targets import open_target

        art = artifact_on_worker(model) if model else None
        self.target = open_target(art, url=cfg.url, model_name=cfg.model_name, api_key_env=cfg.api_key_env, runtime=cfg.runtime,
                                  timeout=cfg.request_timeout_s, concurrency=cfg.batch_size)
        self.fn = _answer(self.target, cfg)
        workers = getattr(self.target, "concurrency", 1)
        self.pool = ThreadPoolExecutor(workers) if workers > 1 else None

    def answer(self, batch: list[tuple[int, Any]]) -> list[dict[str, Any]]:
        if self.pool:
            return list(self.pool.map(lambda ix: self.fn(*ix), batch))
        return [self.fn(i, x) for i, x in batch]

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown(wait=False)
        self.target.close()


def answer_sharded(items: Sequence[tuple[int, Any]], cfg: EvalConfig, ckpt: Checkpoint, *, model: Artifact | None, store_home: Path,
                   label: str) -> dict[int, dict[str, Any]]:
    """Answer every item not yet in ``ckpt`` on ``cfg.workers`` Ray actors; return all rows by index."""
    if model is None and cfg.url is None:
        raise ConfigError("--executor ray needs the model artifact or --url to open the target on each worker")
    todo = [(i, x) for i, x in items if i not in ckpt]
    errors = 0
    with progress.task(label, total=len(items)) as bar:
        if len(items) > len(todo):
            bar.advance(len(items) - len(todo), resumed=len(items) - len(todo))
        if todo:
            from slmops.pipeline.ray_exec import connect, ray_get

            ray = connect(cfg.ray_address)
            parts = shards(todo, min(cfg.workers, len(todo)))
            src = artifact_source(model, store_home) if model is not None else None
            actor_cls = ray.remote(EvalShard).options(num_cpus=1 if model is not None else 0.25, max_restarts=3, max_task_retries=3)
            actors = [actor_cls.remote(cfg, src) for _ in parts]
            queues = [[p[i:i + cfg.batch_size] for i in range(0, len(p), cfg.batch_size)] for p in parts]
            bars = [progress.task(f"shard {i + 1}/{len(parts)}", total=len(p)) for i, p in enumerate(parts)]
            inflight: dict[Any, int] = {}
            try:
                for i, actor in enumerate(actors):
                    inflight[actor.answer.remote(queues[i].pop(0))] = i
                while inflight:
                    [ref], _ = ray.wait(list(inflight), num_returns=1)
                    i = inflight.pop(ref)
                    rows = ray_get(ray, ref, f"eval shard {i + 1}")
                    ckpt.add_many(rows)
                    errors += sum(1 for r in rows if r.get("error"))
                    bars[i].advance(len(rows))
                    bar.advance(len(rows), errors=errors)
                    if queues[i]:
                        inflight[actors[i].answer.remote(queues[i].pop(0))] = i
            finally:
                for b in bars:
                    b.close()
                for a in actors:
                    ray.kill(a)
    return {i: ckpt.rows[i] for i, _ in items if i in ckpt}
