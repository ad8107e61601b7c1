"""Atomic training checkpoints: trainable weights, optimizer, scheduler, RNG states, data position.

Layout (under ``$SLMOPS_HOME/runs/<cache key>/checkpoints/``)::

    step-00000040/
      weights.safetensors     trainable parameters by name (the adapter, or the whole model)
      optimizer.safetensors   optimizer tensors (exp_avg, exp_avg_sq, step) keyed "<param index>.<name>"
      optimizer.json          param groups and non-tensor optimizer state
      rng-<rank>.safetensors  torch (and CUDA) RNG state, numpy's key array, per process
      rng-<rank>.json         the rest of numpy's state and Python's ``random`` state
      state.json              step, data position, scheduler, history; sha256 of every other file

A checkpoint is built in ``.tmp-step-…`` next to the others, fsynced, and only then renamed to
``step-…`` (one atomic ``rename``), so a crash while saving leaves at most a temp dir that is
ignored and cleaned up, never a half-written ``step-…``. ``state.json`` is written last and lists
the digest of every file; :func:`latest_checkpoint` skips any checkpoint that fails that check and
falls back to the previous one. Everything is safetensors or JSON: nothing is unpickled on resume.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmops._optional import require
from slmops.errors import StoreError
from slmops.store.artifact import file_digest, fsync_tree

log = logging.getLogger(__name__)

STATE = "state.json"
_STEP_DIR = re.compile(r"^step-(\d{8})$")
FORMAT_VERSION = 1


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def atomic_dir(final: Path, *, barrier: Callable[[], None] | None = None, is_main: bool = True) -> Iterator[Path]:
    """Build a directory in a temp sibling and rename it to ``final`` when the block succeeds.

    With several processes (``barrier`` given) every process writes its own files into the same
    temp dir; the main process creates, fsyncs and renames it.
    """
    tmp = final.parent / f".tmp-{final.name}"
    sync = barrier or (lambda: None)
    if is_main:
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    sync()
    try:
        yield tmp
        sync()
        if is_main:
            fsync_tree(tmp)
            os.rename(tmp, final)
            _fsync_dir(final.parent)
        sync()
    except BaseException:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


# -- RNG ------------------------------------------------------------------------------------------
def capture_rng() -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, json) describing every RNG training touches: torch, CUDA, numpy, Python."""
    torch = require("torch", extra="train")
    np = require("numpy", extra="train")
    tensors: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, pystate, pygauss = random.getstate()
    meta = {"numpy": [name, int(pos), int(has_gauss), float(gauss)], "python": [version, list(pystate), pygauss]}
    return tensors, meta


def restore_rng(tensors: dict[str, Any], meta: dict[str, Any]) -> None:
    torch = require("torch", extra="train")
    np = require("numpy", extra="train")
    torch.set_rng_state(tensors["torch"])
    cuda = sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k.split(".")[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    name, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((name, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, pystate, pygauss = meta["python"]
    random.setstate((version, tuple(pystate), pygauss))


# -- optimizer ------------------------------------------------------------------------------------
def _write_optimizer(folder: Path, optimizer: Any) -> None:
    st = require("safetensors.torch", extra="train")
    torch = require("torch", extra="train")
    sd = optimizer.state_dict()
    tensors: dict[str, Any] = {}
    scalars: dict[str, Any] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    st.save_file(tensors, str(folder / "optimizer.safetensors"))
    _write_json(folder / "optimizer.json", {"param_groups": sd["param_groups"], "scalars": scalars})


def _read_optimizer(folder: Path) -> dict[str, Any]:
    st = require("safetensors.torch", extra="train")
    tensors = st.load_file(str(folder / "optimizer.safetensors"))
    meta = json.loads((folder / "optimizer.json").read_text())
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    groups = meta["param_groups"]
    for g in groups:
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


# -- save / load ----------------------------------------------------------------------------------
def trainable_state(model: Any) -> dict[str, Any]:
    """The trainable parameters of ``model`` by name (tied weights once), detached on CPU."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    root: Path,
    step: int,
    *,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    state: dict[str, Any],
    rank: int = 0,
    is_main: bool = True,
    barrier: Callable[[], None] | None = None,
    keep: int = 2,
) -> Path | None:
    """Write checkpoint ``step`` atomically (see the module docstring); returns its path.

    Returns None when a complete checkpoint for ``step`` already exists. Older checkpoints beyond
    the ``keep`` most recent are removed once the new one is in place.
    """
    st = require("safetensors.torch", extra="train")
    final = root / f"step-{step:08d}"
    if final.is_dir() and (final / STATE).is_file():
        return None
    with atomic_dir(final, barrier=barrier, is_main=is_main) as tmp:
        tensors, meta = capture_rng()
        st.save_file(tensors, str(tmp / f"rng-{rank}.safetensors"))
        _write_json(tmp / f"rng-{rank}.json", meta)
        if barrier is not None:
            barrier()
        if is_main:
            st.save_file(trainable_state(model), str(tmp / "weights.safetensors"), metadata={"step": str(step)})
            _write_optimizer(tmp, optimizer)
            files = {p.name: file_digest(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            _write_json(tmp / STATE, {**state, "format": FORMAT_VERSION, "step": step, "scheduler": scheduler.state_dict(), "files": files})
    if is_main:
        prune(root, keep=keep)
        log.info("checkpoint step %d written to %s", step, final)
    return final


@dataclass(frozen=True)
class Checkpoint:
    """A complete, verified checkpoint on disk."""

    path: Path
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def weights(self) -> dict[str, Any]:
        return require("safetensors.torch", extra="train").load_file(str(self.path / "weights.safetensors"))

    def optimizer_state(self) -> dict[str, Any]:
        return _read_optimizer(self.path)

    def restore_rng(self, rank: int = 0) -> None:
        st = require("safetensors.torch", extra="train")
        tensors_file = self.path / f"rng-{rank}.safetensors"
        if not tensors_file.is_file():
            raise StoreError(f"checkpoint {self.path.name} has no RNG state for process {rank}",
                             why="it was written by a run with fewer processes", fix="resume with the same number of processes")
        restore_rng(st.load_file(str(tensors_file)), json.loads((self.path / f"rng-{rank}.json").read_text()))


def verify(path: Path) -> dict[str, Any]:
    """The state of checkpoint ``path`` if every listed file is present and intact; else raise."""
    try:
        state = json.loads((path / STATE).read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"checkpoint {path.name} has no readable {STATE}", why=str(exc)) from exc
    for name, digest in state.get("files", {}).items():
        f = path / name
        if not f.is_file() or file_digest(f) != digest:
            raise StoreError(f"checkpoint {path.name} is damaged", why=f"{name} is missing or does not match its digest")
    return state


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders under ``root``, newest step first (temp dirs excluded)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def latest_checkpoint(root: Path) -> Checkpoint | None:
    """The newest checkpoint that verifies; damaged ones are skipped with a warning."""
    for path in list_checkpoints(root):
        try:
            return Checkpoint(path, verify(path))
        except StoreError as exc:
            log.warning("skipping %s: %s", path, exc.message)
    return None


def prune(root: Path, *, keep: int) -> None:
    """Keep the ``keep`` newest complete checkpoints; drop older ones and stale temp dirs."""
    for path in list_checkpoints(root)[keep:]:
        shutil.rmtree(path, ignore_errors=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def clear(root: Path) -> None:
    """Remove every checkpoint under ``root``."""
    shutil.rmtree(root, ignore_errors=True)


def digest_of_weights(weights: dict[str, Any]) -> str:
    """A stable digest of a tensor dict (used by tests and resume checks)."""
    h = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name]
        h.update(name.encode())
        h.update(t.float().numpy().tobytes())
    return h.hexdigest()
