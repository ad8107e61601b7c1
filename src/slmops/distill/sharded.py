"""Teacher generation sharded over Ray actors (``distill generate --executor ray --workers N``).

The pending requests are cut into N contiguous shards, one per actor; each actor holds its own
teacher (a pool of HTTP clients to the endpoint, or a local model) and answers its shard a chunk
at a time. Every answered chunk comes back to the driver, which appends it to the run's work file
before asking for the next one, so progress is per shard and an interrupted run resumes with what
is still missing (re-sharded). The dataset is built from the work file in the plan's order, so the
result does not depend on which actor answered what, or when: with the same seed and greedy
decoding it has the same digest as a local run. Ray restarts an actor that dies and re-sends its
chunk.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slmops import progress
from slmops.distill.config import GenerateConfig
from slmops.distill.teachers import OnResult, Result, TeacherRequest
from slmops.pipeline.ray_worker import artifact_on_worker, artifact_source
from slmops.store.artifact import Artifact


class ShardWorker:
    """One Ray actor: a teacher of its own, answering chunks of requests."""

    def __init__(self, cfg: GenerateConfig, teacher: dict[str, Any] | None, cache_root: str | None) -> None:
        from slmops.distill.generate import make_teacher

        art = artifact_on_worker(teacher) if teacher else None
        root = Path(cache_root) if cache_root else Path(tempfile.gettempdir()) / "slmops-teacher-cache"
        self.teacher = make_teacher(cfg, art, root)

    def answer(self, requests: list[TeacherRequest]) -> list[tuple[str, Result]]:
        got: list[tuple[str, Result]] = []
        self.teacher.run(requests, lambda req, res: got.append((req.key, res)))
        return got

    def stats(self) -> dict[str, Any]:
        return self.teacher.stats()

    def close(self) -> None:
        self.teacher.close()


def shards(items: Sequence[Any], n: int) -> list[list[Any]]:
    """``items`` cut into ``n`` contiguous, nearly equal shards (the first ones one longer)."""
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return [s for s in out if s]


def ask_sharded(requests: list[TeacherRequest], cfg: GenerateConfig, teacher: Artifact | None, cache_root: Path, store_home: Path,
                on_result: OnResult) -> dict[str, Any]:
    """Answer ``requests`` on ``cfg.workers`` Ray actors; ``on_result`` runs here, in the driver, for every answer."""
    from slmops.pipeline.ray_exec import connect, ray_get

    ray = connect(cfg.ray_address)
    parts = shards(requests, min(cfg.workers, len(requests)))
    chunk = max(1, cfg.batch_size * 2 if teacher is not None else cfg.concurrency * 4)
    src = artifact_source(teacher, store_home) if teacher is not None else None
    actor_cls = ray.remote(ShardWorker).options(num_cpus=1 if teacher is not None else 0.25, max_restarts=3, max_task_retries=3)
    actors = [actor_cls.remote(cfg, src, str(cache_root)) for _ in parts]
    by_key = {r.key: r for r in requests}
    queues = [[p[i:i + chunk] for i in range(0, len(p), chunk)] for p in parts]
    bars = [progress.task(f"shard {i + 1}/{len(parts)}", total=len(p)) for i, p in enumerate(parts)]
    inflight: dict[Any, int] = {}
    stats: dict[str, Any] = {}
    try:
        for i, actor in enumerate(actors):
            inflight[actor.answer.remote(queues[i].pop(0))] = i
        while inflight:
            [ref], _ = ray.wait(list(inflight), num_returns=1)
            i = inflight.pop(ref)
            for key, res in ray_get(ray, ref, f"teacher shard {i + 1}"):
                on_result(by_key[key], res)
                bars[i].advance(1)
            if queues[i]:
                inflight[actors[i].answer.remote(queues[i].pop(0))] = i
        for s in ray.get([a.stats.remote() for a in actors]):
            for k, v in s.items():
                stats[k] = stats.get(k, 0) + v if isinstance(v, int | float) and not isinstance(v, bool) else v
        stats["workers"] = len(actors)
    finally:
        for bar in bars:
            bar.close()
        for a in actors:
            ray.kill(a)
    return stats
