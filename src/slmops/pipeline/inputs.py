"""Turning what a user typed (``bot@prod``, ``./data.jsonl``, ``./my-model``, ``hf:org/name``) into artifacts.

This is the one resolver every CLI verb and recipe step uses. Registry names and digests resolve in
:mod:`slmops.store.refs`; a file is imported as a dataset (``data.import``), a folder as a model
(``models.import``), and a hub id is downloaded (when the hub is reachable) and then imported — each
through the cached stage runner, so imports leave lineage like any other step.
"""

from __future__ import annotations

from pathlib import Path

from slmops.errors import StoreError
from slmops.pipeline.runner import run_stage
from slmops.store.artifact import Artifact
from slmops.store.refs import ModelRef, resolve
from slmops.store.registry import Store


def resolve_input(text: str, store: Store, *, kind: str | tuple[str, ...] | None = None, allow_pickle: bool = False) -> Artifact:
    """Resolve ``text`` to an artifact, importing files, folders and hub models as needed."""

    def importer(ref: ModelRef) -> Artifact:
        if ref.scheme == "hf":
            from slmops.models.importer import hub_download

            folder = hub_download(ref.value)
            return run_stage("models.import", {}, {"path": str(folder), "allow_pickle": allow_pickle}, store=store).artifact
        path = ref.path
        if path.is_dir():
            return run_stage("models.import", {}, {"path": str(path), "allow_pickle": allow_pickle}, store=store).artifact
        return run_stage("data.import", {}, {"path": str(path)}, store=store).artifact

    return resolve(_bare_file(ModelRef.parse(text), store), store, importer=importer, kind=kind)


def _bare_file(ref: ModelRef, store: Store) -> ModelRef:
    """A bare word naming a file or folder here (``prompts.jsonl``) is that path, unless the registry has that name."""
    if ref.scheme != "name" or ref.version is not None or ref.alias is not None or not Path(ref.value).exists():
        return ref
    try:
        store.lookup(ref.value)
    except StoreError:
        return ModelRef("path", ref.value)
    return ref
