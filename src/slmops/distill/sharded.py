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
from pathlib import Path
from typing import Any

from slmops.distill.config import TEACHER_BATCH_SIZE, GenerateConfig
from slmops.distill.teachers import OnResult, Result, TeacherRequest
from slmops.stage import RunOptions
from slmops.stage.shards import artifact_on_worker, artifact_source, run_sharded
from slmops.store.artifact import Artifact
from slmops.store.registry import Store


class ShardWorker:
    """One Ray actor: a teacher of its own, answering chunks of requests."""

    def __init__(self, cfg: GenerateConfig, opts: RunOptions, teacher: dict[str, Any] | None, cache_root: str | None) -> None:
        from slmops.distill.generate import make_teacher

        art = artifact_on_worker(teacher) if teacher else None
        root = Path(cache_root) if cache_root else Path(tempfile.gettempdir()) / "slmops-teacher-cache"
        self.teacher = make_teacher(cfg, opts, art, root)

    def process(self, requests: list[TeacherRequest]) -> list[tuple[str, Result]]:
        got: list[tuple[str, Result]] = []
        self.teacher.run(requests, lambda req, res: got.append((req.key, res)))
        return got

    def stats(self) -> dict[str, Any]:
        return self.teacher.stats()

    def close(self) -> None:
        self.teacher.close()


def ask_sharded(requests: list[TeacherRequest], cfg: GenerateConfig, opts: RunOptions, teacher: Artifact | None, cache_root: Path,
                store: Store, on_result: OnResult) -> dict[str, Any]:
    """Answer ``requests`` on ``opts.workers`` Ray actors; ``on_result`` runs here, in the driver, for every answer."""
    by_key = {r.key: r for r in requests}

    def handle(answers: list[tuple[str, Result]]) -> int:
        for key, res in answers:
            on_result(by_key[key], res)
        return len(answers)

    src = artifact_source(teacher, store) if teacher is not None else None
    chunk = max(1, opts.batch(TEACHER_BATCH_SIZE) * 2 if teacher is not None else opts.concurrency * 4)
    per_actor = run_sharded(requests, workers=opts.workers, chunk=chunk, actor=ShardWorker, args=(cfg, opts, src, str(cache_root)),
                            num_cpus=1 if teacher is not None else 0.25, address=opts.ray_address, on_result=handle,
                            label="teacher", final="stats")
    stats: dict[str, Any] = {}
    for st in per_actor:
        for k, v in st.items():
            stats[k] = stats.get(k, 0) + v if isinstance(v, int | float) and not isinstance(v, bool) else v
    stats["workers"] = len(per_actor)
    return stats
