"""Opening a GGUF file someone brings in: structural checks, metadata as Python values, tensor types.

:func:`open_gguf` validates the file first (magic, header, tensor table, that every tensor's data
lies inside the file: :func:`slmops.runtimes.llamacpp_lib.check_gguf_file`) and turns every failure
into one :class:`~slmops.errors.DataError` naming the file and the fix, so a truncated download or a
damaged file never reaches llama.cpp or the dequantizer. :func:`dequantizable` says which tensor
types the ``gguf`` library can turn back into floats.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmops._optional import require
from slmops.errors import ConfigError, DataError

log = logging.getLogger(__name__)

_FIX = "download or copy the file again (it is damaged or incomplete), or re-export it with llama.cpp"


@dataclass
class GGUFFile:
    """A validated GGUF file: its reader, metadata and tensors."""

    path: Path
    reader: Any  # gguf.GGUFReader
    meta: dict[str, Any]

    @property
    def arch(self) -> str:
        return str(self.meta.get("general.architecture") or "")

    def get(self, key: str, default: Any = None) -> Any:
        """An architecture key such as ``block_count`` (``llama.block_count``) or a full key."""
        if key in self.meta:
            return self.meta[key]
        return self.meta.get(f"{self.arch}.{key}", default)

    @property
    def tensors(self) -> list[Any]:
        return list(self.reader.tensors)

    def tensor_types(self) -> dict[str, int]:
        """How many tensors of each type (``{"Q4_1": 211, "F32": 61}``)."""
        return dict(Counter(t.tensor_type.name for t in self.reader.tensors))


def field_value(field: Any) -> Any:
    """A reader field as a Python value (str, int, float, bool, or a list of them)."""
    gguf = require("gguf", extra="gguf", purpose="reading GGUF files")
    vt = gguf.GGUFValueType
    types = list(field.types)
    if not types:
        return None

    def scalar(part: Any, t: Any) -> Any:
        if t == vt.STRING:
            return bytes(part).decode("utf-8", errors="replace")
        v = part.tolist()
        v = v[0] if isinstance(v, list) else v
        return bool(v) if t == vt.BOOL else v

    if types[0] == vt.ARRAY:
        return [scalar(field.parts[i], types[-1]) for i in field.data]
    return scalar(field.parts[field.data[0]], types[0])


def open_gguf(path: Path) -> GGUFFile:
    """Validate and open ``path``; :class:`DataError` (naming the file and the fix) when it is not a sound GGUF."""
    from slmops.runtimes.llamacpp_lib import check_gguf_file

    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise DataError(f"no GGUF file at {path}", fix="check the path")
    try:
        check_gguf_file(path)
    except DataError as exc:
        raise DataError(f"{path} is not a usable GGUF file: {exc.what}", why=exc.why, fix=_FIX) from exc
    gguf = require("gguf", extra="gguf", purpose="reading GGUF files")
    try:
        reader = gguf.GGUFReader(str(path), "r")
        meta = {name: field_value(f) for name, f in reader.fields.items() if not name.startswith("GGUF.")}
        for t in reader.tensors:  # shapes must match the element counts the types imply
            _ = int(t.n_elements), t.tensor_type.name
    except Exception as exc:  # the reader raises ValueError, struct.error, IndexError… on damaged files
        raise DataError(f"{path} is a damaged GGUF file", why=f"{type(exc).__name__}: {exc}"[:300], fix=_FIX) from exc
    if not meta.get("general.architecture"):
        raise DataError(f"{path} has no general.architecture", why="every llama.cpp model file names its architecture", fix=_FIX)
    if not reader.tensors:
        raise DataError(f"{path} holds no tensors", why="it may be a vocabulary-only GGUF", fix="use the model's full GGUF file")
    return GGUFFile(path, reader, meta)


def dequantizable(qtype: Any) -> bool:
    """Whether ``gguf.quants.dequantize`` can turn tensors of ``qtype`` into floats."""
    gguf = require("gguf", extra="gguf", purpose="reading GGUF files")
    q = gguf.GGMLQuantizationType
    return qtype in (q.F32, q.F16) or qtype in getattr(gguf.quants, "_type_traits", {})


def check_dequantizable(f: GGUFFile) -> None:
    """:class:`ConfigError` naming the file, the tensor types that cannot be read back and the fix."""
    bad = sorted({t.tensor_type.name for t in f.tensors if not dequantizable(t.tensor_type)})
    if bad:
        raise ConfigError(
            f"{f.path.name} holds tensors of type {', '.join(bad)}, which slmops cannot dequantize",
            why="the gguf library has no dequantizer for these types",
            fix=f"import it as GGUF (slmops models import {f.path.name} without --to hf; llama.cpp runs it as is), "
            "or convert from a GGUF of another type (F16, Q8_0, Q4_K_M…)",
        )
