"""What a Ray worker does for one recipe step: get the inputs, run the stage, hand the files back.

The worker never writes the driver's registry. With ``exchange: remote`` it keeps a store of its
own (``$SLMOPS_WORKER_HOME``, default ``<tmp>/slmops-ray-worker``), pulls the inputs into it by
digest from the object-store remote, runs the stage into a temp dir there and uploads the output
files as blobs; the driver downloads and verifies them and commits the artifact. No artifact record
is written to the remote by a worker, so a worker killed mid-step leaves only unreferenced blobs.
With ``exchange: shared-fs`` the worker reads the inputs from the driver's store folder (seen at
the same path) and writes into a temp dir the driver chose there; the driver renames it into place.
Either way a retried attempt starts from an empty output folder, so the result is the same.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from slmops.errors import ConfigError
from slmops.stage import RunOptions, StageContext, StageOutput, cache_key, get_stage
from slmops.stage.shards import worker_home
from slmops.store.artifact import Artifact, read_manifest

log = logging.getLogger(__name__)


def run_step(stage: str, version: int, cfg: Any, inputs: dict[str, str], exchange: dict[str, Any],
             options: RunOptions | None = None) -> dict[str, Any]:
    """Run stage ``stage`` on the input digests; returns the StageOutput fields plus where the files are."""
    st = get_stage(stage)
    if st.version != version:
        raise ConfigError(f"stage {stage} is version {st.version} on worker {socket.gethostname()}, {version} on the driver",
                          fix="install the same slmops on the driver and every worker")
    if exchange["mode"] == "shared-fs":
        return _shared_fs(st, cfg, inputs, Path(exchange["home"]), Path(exchange["out"]), options or RunOptions())
    return _remote(st, cfg, inputs, exchange["remote"], options or RunOptions())


def _fields(result: StageOutput | None) -> dict[str, Any]:
    r = result or StageOutput()
    return {"metrics": r.metrics, "meta": r.meta, "kind": r.kind, "format": r.format, "node": socket.gethostname(), "pid": os.getpid()}


def _context(st: Any, cfg: Any, arts: dict[str, Artifact], store: Any, out: Path, options: RunOptions) -> StageContext:
    """The same context the local runner would hand this stage (same cache key, so the same work dir)."""
    return StageContext(store=store, out=out, key=cache_key(st, cfg, arts), stage=st.name, options=options)


def _shared_fs(st: Any, cfg: Any, inputs: dict[str, str], home: Path, out: Path, options: RunOptions) -> dict[str, Any]:
    from slmops.store.registry import Store

    arts = {}
    for role, digest in inputs.items():
        path = home / "artifacts" / digest
        arts[role] = Artifact(path, read_manifest(path))
    if out.exists():  # a retried attempt: start clean
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with Store(home) as store:  # read-only use: the driver alone commits
        return _fields(st.fn(arts, cfg, _context(st, cfg, arts, store, out, options)))


def _remote(st: Any, cfg: Any, inputs: dict[str, str], remote: dict[str, Any], options: RunOptions) -> dict[str, Any]:
    from slmops.store.objects import ObjectStore
    from slmops.store.registry import Store
    from slmops.store.remotes import RemoteSpec
    from slmops.store.sync import TransferReport, fetch_artifact, upload_tree

    objects = ObjectStore(RemoteSpec(**remote))
    report = TransferReport("worker", objects.spec.name, st.name, "")
    with Store(worker_home()) as store:
        arts = {}
        for role, digest in inputs.items():
            fetch_artifact(store, objects, digest, report)
            arts[role] = store.get(digest)
        with store.staging() as tmp:
            fields = _fields(st.fn(arts, cfg, _context(st, cfg, arts, store, tmp, options)))
            fields["files"] = upload_tree(objects, tmp, report)
    fields["bytes_uploaded"] = report.bytes_transferred
    return fields
