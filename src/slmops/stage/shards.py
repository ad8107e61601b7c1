"""Ray plumbing of the sharded stages (teacher generation, evaluation): connect, shard, fetch artifacts on workers.

:func:`run_sharded` cuts the items into contiguous shards, one actor each; every actor gets its next
chunk only after the driver has handled the previous one (appended it to a work file or checkpoint),
so an interrupted run loses at most the chunks in flight. Each shard has its own progress task. Ray
restarts an actor that dies and re-sends its chunk; an SlmopsError raised in an actor comes back as
itself (:func:`ray_get`). An actor finds the artifact it needs (a local teacher, the evaluated model)
through :func:`artifact_source` / :func:`artifact_on_worker`: the store's folder when it is shared,
else the default remote, by digest. The recipe executor (:mod:`slmops.pipeline.ray_exec`) connects
through :func:`connect` too. Ray is imported only when one of these runs.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from slmops import progress
from slmops._optional import require
from slmops.errors import ConfigError, SlmopsError
from slmops.store.artifact import Artifact, read_manifest
from slmops.store.registry import Store

log = logging.getLogger(__name__)


def connect(address: str | None = None) -> Any:
    """Connect to the Ray cluster at ``address`` (or ``RAY_ADDRESS``; none: start a local one) unless connected."""
    ray = require("ray", extra="scale", purpose="--executor ray")
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise SlmopsError(f"cannot connect to the Ray cluster at {address or os.environ.get('RAY_ADDRESS') or 'a new local cluster'}",
                              why=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                              fix="check --address (ray://HOST:10001 or HOST:6379) and that `ray status` works there") from exc
    return ray


def ray_get(ray: Any, ref: Any, where: str) -> Any:
    """``ray.get(ref)``, except that an SlmopsError raised remotely comes back as itself, prefixed with ``where``."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else None
        if isinstance(cause, SlmopsError):
            raise type(cause)(f"{where}: {cause.what}", why=cause.why, fix=cause.fix) from None
        raise


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


# -- artifacts a sharded stage's actors need (a local teacher or evaluated model) ----------------------------
def worker_home() -> Path:
    """This node's worker store (exchange: remote)."""
    return Path(os.environ.get("SLMOPS_WORKER_HOME") or Path(tempfile.gettempdir()) / "slmops-ray-worker")


def artifact_source(art: Artifact, store: Store) -> dict[str, Any]:
    """How a Ray actor finds ``art``: its folder when shared, else the default remote (pushed there now, by digest)."""
    src: dict[str, Any] = {"path": str(art.path), "digest": art.digest, "remote": None}
    try:
        from slmops.store.remotes import get_remote
        from slmops.store.sync import TransferReport, ensure_on_remote, open_remote

        spec = get_remote(store)
        ensure_on_remote(store, open_remote(store), art.digest, TransferReport("push", spec.name, art.short, art.digest))
        src["remote"] = spec.to_dict()
    except Exception as exc:  # noqa: BLE001 - no remote: workers must see the folder
        log.info("%s not pushed to a remote (%s); Ray workers read %s", art.short, exc, art.path)
    return src


def artifact_on_worker(src: dict[str, Any]) -> Artifact:
    """The artifact of :func:`artifact_source` on this worker: its folder when visible, else pulled into the worker store."""
    path = Path(src["path"])
    if (path / "manifest.json").is_file():
        return Artifact(path, read_manifest(path))
    if not src.get("remote"):
        raise ConfigError(f"artifact {src['digest'][:12]} is not visible on Ray worker {socket.gethostname()}",
                          fix="add a remote (`slmops store remote add`) so workers can pull it, or share the store folder")
    from slmops.store.objects import ObjectStore
    from slmops.store.remotes import RemoteSpec
    from slmops.store.sync import TransferReport, fetch_artifact

    objects = ObjectStore(RemoteSpec(**src["remote"]))
    store = Store(worker_home())
    fetch_artifact(store, objects, src["digest"], TransferReport("pull", objects.spec.name, src["digest"][:12], src["digest"]))
    return store.get(src["digest"])
