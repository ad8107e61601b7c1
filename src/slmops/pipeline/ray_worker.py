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
import tempfile
from pathlib import Path
from typing import Any

from slmops.errors import ConfigError
from slmops.stage import StageContext, StageOutput, cache_key, get_stage
from slmops.store.artifact import Artifact, read_manifest

log = logging.getLogger(__name__)


def worker_home() -> Path:
    """This node's worker store (exchange: remote)."""
    return Path(os.environ.get("SLMOPS_WORKER_HOME") or Path(tempfile.gettempdir()) / "slmops-ray-worker")


def run_step(stage: str, version: int, cfg: Any, inputs: dict[str, str], exchange: dict[str, Any]) -> dict[str, Any]:
    """Run stage ``stage`` on the input digests; returns the StageOutput fields plus where the files are."""
    st = get_stage(stage)
    if st.version != version:
        raise ConfigError(f"stage {stage} is version {st.version} on worker {socket.gethostname()}, {version} on the driver",
                          fix="install the same slmops on the driver and every worker")
    if exchange["mode"] == "shared-fs":
        return _shared_fs(st, cfg, inputs, Path(exchange["home"]), Path(exchange["out"]))
    return _remote(st, cfg, inputs, exchange["remote"])


def _fields(result: StageOutput | None) -> dict[str, Any]:
    r = result or StageOutput()
    return {"metrics": r.metrics, "meta": r.meta, "kind": r.kind, "format": r.format, "node": socket.gethostname(), "pid": os.getpid()}


def _context(st: Any, cfg: Any, arts: dict[str, Artifact], store: Any, out: Path) -> StageContext:
    """The same context the local runner would hand this stage (same cache key, so the same work dir)."""
    return StageContext(store=store, out=out, key=cache_key(st, cfg, arts), stage=st.name)


def _shared_fs(st: Any, cfg: Any, inputs: dict[str, str], home: Path, out: Path) -> dict[str, Any]:
    from slmops.store.registry import Store

    arts = {}
    for role, digest in inputs.items():
        path = home / "artifacts" / digest
        arts[role] = Artifact(path, read_manifest(path))
    if out.exists():  # a retried attempt: start clean
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with Store(home) as store:  # read-only use: the driver alone commits
        return _fields(st.fn(arts, cfg, _context(st, cfg, arts, store, out)))


def _remote(st: Any, cfg: Any, inputs: dict[str, str], remote: dict[str, Any]) -> dict[str, Any]:
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
            fields = _fields(st.fn(arts, cfg, _context(st, cfg, arts, store, tmp)))
            fields["files"] = upload_tree(objects, tmp, report)
    fields["bytes_uploaded"] = report.bytes_transferred
    return fields


# -- artifacts a sharded stage's actors need (a local teacher or evaluated model) ----------------------------
def artifact_source(art: Artifact, store_home: Path) -> dict[str, Any]:
    """How a Ray actor finds ``art``: its folder when shared, else the default remote (pushed there now, by digest)."""
    src: dict[str, Any] = {"path": str(art.path), "digest": art.digest, "remote": None}
    try:
        from slmops.store.registry import Store
        from slmops.store.remotes import get_remote
        from slmops.store.sync import TransferReport, ensure_on_remote, open_remote

        with Store(store_home) as store:
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
    from slmops.store.registry import Store
    from slmops.store.remotes import RemoteSpec
    from slmops.store.sync import TransferReport, fetch_artifact

    objects = ObjectStore(RemoteSpec(**src["remote"]))
    store = Store(worker_home())
    fetch_artifact(store, objects, src["digest"], TransferReport("pull", objects.spec.name, src["digest"][:12], src["digest"]))
    return store.get(src["digest"])
