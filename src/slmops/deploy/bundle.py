"""Edge bundles: one self-contained folder that serves a model offline on a device class.

``write_bundle`` checks the model against a device profile (formats, size), then writes::

    DIR/model/            the artifact's files and its manifest.json
    DIR/serve.json        the ServeConfig to run (model id = the bundle's model name)
    DIR/slmops-serve.service   a systemd unit
    DIR/Containerfile     a container recipe (pip install slmops[serve], copy the bundle)
    DIR/SHA256SUMS        sha256 of every other file (``sha256sum -c`` format)

``open_bundle`` verifies every checksum (refusing, naming the file, when one differs) and loads
the model into a private store — no registry needed on the device; ``opened_bundle`` does the
same in a temporary store that is removed when the server stops.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slmops import formats
from slmops.deploy.profiles import DeviceProfile, check_profile
from slmops.errors import ConfigError, StoreError
from slmops.store.artifact import Artifact, read_manifest

SUMS = "SHA256SUMS"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != SUMS)


def write_bundle(model: Artifact, profile: DeviceProfile, out: Path, *, name: str = "model", port: int = 8000) -> dict[str, Any]:
    """Write the bundle for ``model`` into ``out`` (must be empty or absent); returns a summary."""
    if model.kind not in formats.model_kinds():
        raise ConfigError(f"{model.short} is a {model.kind} artifact", fix=f"bundle a {', '.join(formats.model_kinds())} artifact (merge adapters first)")
    size = model.manifest.size_bytes
    reasons = check_profile(profile, format=model.manifest.format, size_bytes=size)
    if reasons:
        raise ConfigError(f"model {model.short} does not fit profile {profile.name}", why="; ".join(reasons),
                          fix="pick a smaller or differently exported variant (slmops optimize --profile), or another --profile")
    out = Path(out).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} is not empty", fix="choose a new folder or empty it first")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(model.path, out / "model", dirs_exist_ok=False)
    serve_cfg = {"models": [name], "host": "127.0.0.1", "port": port}
    (out / "serve.json").write_text(json.dumps({"name": name, "digest": model.digest, "profile": profile.name, "serve": serve_cfg}, indent=2) + "\n")
    (out / "slmops-serve.service").write_text(
        f"[Unit]\nDescription=slmops edge server ({name})\nAfter=network.target\n\n[Service]\n"
        "WorkingDirectory=/opt/slmops-bundle\nEnvironment=SLMOPS_HOME=/var/lib/slmops\nEnvironment=HF_HUB_OFFLINE=1\n"
        "ExecStart=/usr/bin/env slmops serve --bundle /opt/slmops-bundle\nRestart=on-failure\nDynamicUser=yes\n"
        "StateDirectory=slmops\n\n[Install]\nWantedBy=multi-user.target\n")
    (out / "Containerfile").write_text(
        "FROM python:3.11-slim\nRUN pip install --no-cache-dir 'slmops[serve,train]'\nCOPY . /opt/slmops-bundle\n"
        f"ENV HF_HUB_OFFLINE=1 SLMOPS_HOME=/var/lib/slmops\nEXPOSE {port}\n"
        'CMD ["slmops", "serve", "--bundle", "/opt/slmops-bundle", "--host", "0.0.0.0"]\n')
    lines = [f"{_sha256(p)}  {p.relative_to(out).as_posix()}" for p in _files(out)]
    (out / SUMS).write_text("\n".join(lines) + "\n")
    return {"out": str(out), "name": name, "digest": model.digest, "profile": profile.name, "size_bytes": size, "files": len(lines)}


def read_spec(root: Path) -> dict[str, Any]:
    """The bundle's ``serve.json`` (name, digest, profile, serve settings), not yet verified."""
    root = Path(root).expanduser().resolve()
    if not (root / SUMS).is_file() or not (root / "serve.json").is_file():
        raise StoreError(f"{root} is not a bundle", why=f"it lacks {SUMS} or serve.json", fix="make one with `slmops bundle MODEL --profile P --out DIR`")
    try:
        spec = json.loads((root / "serve.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"bundle {root}: serve.json is unreadable", why=str(exc), fix="copy the bundle again, or rebuild it") from exc
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("digest"), str):
        raise StoreError(f"bundle {root}: serve.json lacks the model's name and digest", fix="rebuild the bundle with `slmops bundle`")
    return spec


def verify_bundle(root: Path) -> dict[str, Any]:
    """Check every file listed in SHA256SUMS (and that nothing listed is missing); returns serve.json."""
    root = Path(root).expanduser().resolve()
    sums = root / SUMS
    read_spec(root)
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        digest, _, rel = line.partition("  ")
        path = (root / rel).resolve()
        if root not in path.parents:
            raise StoreError(f"bundle {root}: {SUMS} names {rel!r} outside the bundle", fix="rebuild the bundle")
        if not path.is_file():
            raise StoreError(f"bundle {root}: {rel} is missing", fix="copy the whole bundle again, or rebuild it")
        if _sha256(path) != digest:
            raise StoreError(f"bundle {root}: {rel} does not match its checksum", why="the file changed or was corrupted after bundling",
                             fix="copy the bundle again from its source, or rebuild it with `slmops bundle`")
    return read_spec(root)


def open_bundle(root: Path, home: Path) -> tuple[Any, dict[str, Any]]:
    """Verify ``root`` and load its model into a private store at ``home``; returns (store, serve.json)."""
    from slmops.store.registry import Store

    spec = verify_bundle(root)
    root = Path(root).expanduser().resolve()
    manifest = read_manifest(root / "model")
    store = Store(home)
    with store.staging() as tmp:
        for src in (root / "model").rglob("*"):
            if src.is_file() and src.name != "manifest.json":
                dst = tmp / src.relative_to(root / "model")
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)
        art = store.commit(tmp, kind=manifest.kind, format=manifest.format, meta=manifest.meta, name=spec["name"])
    if art.digest != spec["digest"]:
        store.close()
        raise StoreError(f"bundle {root}: the model's content digest is {art.short}, not {spec['digest'][:12]}", fix="rebuild the bundle")
    return store, spec


@contextlib.contextmanager
def opened_bundle(root: Path) -> Iterator[tuple[Any, dict[str, Any]]]:
    """:func:`open_bundle` into a temporary store that is closed and deleted on exit (``serve --bundle``)."""
    home = Path(tempfile.mkdtemp(prefix="slmops-bundle-"))
    try:
        store, spec = open_bundle(root, home=home)
        with store:
            yield store, spec
    finally:
        shutil.rmtree(home, ignore_errors=True)
