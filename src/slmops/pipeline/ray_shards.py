"""Work items sharded over Ray actors, one chunk at a time, with results handled in the driver as they arrive.

Used by the sharded batch stages (teacher generation, evaluation): the items are cut into
contiguous shards, one actor each; every actor gets its next chunk only after the driver has
handled the previous one (appended it to a work file or checkpoint), so an interrupted run loses at
most the chunks in flight. Each shard has its own progress task. Ray restarts an actor that dies
and re-sends its chunk; an SlmopsError raised in an actor comes back as itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from slmops import progress


def shards(items: Sequence[Any], n: int) -> list[list[Any]]:
    """``items`` cut into ``n`` contiguous, nearly equal shards (the first ones one longer); empty shards dropped."""
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return [s for s in out if s]


def run_sharded(items: Sequence[Any], *, workers: int, chunk: int, actor: type, args: tuple[Any, ...], num_cpus: float,
                address: str | None, on_result: Callable[[Any], int], label: str, final: str | None = None) -> list[Any]:
    """Process ``items`` on ``workers`` actors of class ``actor`` (built with ``args``), calling its ``process(chunk)``.

    ``on_result(result)`` handles one chunk's result in the driver and returns how many items it covered.
    Returns, when ``final`` names a method, what each actor's ``final()`` returned (e.g. its stats).
    """
    from slmops.pipeline.ray_exec import connect, ray_get

    ray = connect(address)
    parts = shards(items, min(workers, len(items)))
    cls = ray.remote(actor).options(num_cpus=num_cpus, max_restarts=3, max_task_retries=3)
    actors = [cls.remote(*args) for _ in parts]
    queues = [[p[i:i + chunk] for i in range(0, len(p), chunk)] for p in parts]
    bars = [progress.task(f"shard {i + 1}/{len(parts)}", total=len(p)) for i, p in enumerate(parts)]
    inflight: dict[Any, int] = {}
    try:
        for i, a in enumerate(actors):
            inflight[a.process.remote(queues[i].pop(0))] = i
        while inflight:
            [ref], _ = ray.wait(list(inflight), num_returns=1)
            i = inflight.pop(ref)
            bars[i].advance(on_result(ray_get(ray, ref, f"{label} shard {i + 1}")))
            if queues[i]:
                inflight[actors[i].process.remote(queues[i].pop(0))] = i
        return ray_get(ray, [getattr(a, final).remote() for a in actors], label) if final else []
    finally:
        for b in bars:
            b.close()
        for a in actors:
            ray.kill(a)
