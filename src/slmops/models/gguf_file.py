"""Opening a GGUF file someone brings in: structural checks, metadata as Python values, tensor types.

:func:`open_gguf` validates the file first (magic, header, tensor table, that every tensor's data
lies inside the file: :func:`check_gguf_file`) and turns every failure
into one :class:`~slmops.errors.DataError` naming the file and the fix, so a truncated download or a
damaged file never reaches llama.cpp or the dequantizer. :func:`dequantizable` says which tensor
types the ``gguf`` library can turn back into floats. :func:`locate_gguf` finds the model file and
LoRA adapters of an ``export.gguf`` folder (``gguf.json``). The llama.cpp runtime and the quantizer
validate through the same functions before llama.cpp maps a file. :func:`writing_gguf` is the one way
our converters write a GGUF: into ``NAME.partial``, renamed into place only once complete.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from slmops._optional import require
from slmops.errors import ConfigError, DataError, StoreError

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
SIDECAR = "gguf.json"
CACHE_MIN_BYTES = 32 << 20
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
    """Validate and open ``path``; :class:`DataError` (naming the file and the fix) when it is not a sound GGUF.

    Parsing a GGUF's metadata costs seconds for a large vocabulary, so an opened file of at least
    ``CACHE_MIN_BYTES`` is remembered per (path, size, modification time) for this process.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise DataError(f"no GGUF file at {path}", fix="check the path")
    st = path.stat()
    return (_open_cached if st.st_size >= CACHE_MIN_BYTES else _open)(str(path), st.st_size, st.st_mtime_ns)


def _open(name: str, size: int, mtime_ns: int) -> GGUFFile:
    path = Path(name)
    try:
        reader, _ = read_gguf(path)
    except DataError as exc:
        raise DataError(f"{path} is not a usable GGUF file: {exc.what}", why=exc.why, fix=_FIX) from exc
    try:
        meta = {key: field_value(f) for key, f in reader.fields.items() if not key.startswith("GGUF.")}
    except Exception as exc:  # a damaged value (bad UTF-8 length, index past the end…)
        raise DataError(f"{path} is a damaged GGUF file", why=f"{type(exc).__name__}: {exc}"[:300], fix=_FIX) from exc
    if not meta.get("general.architecture"):
        raise DataError(f"{path} has no general.architecture", why="every llama.cpp model file names its architecture", fix=_FIX)
    if not reader.tensors:
        raise DataError(f"{path} holds no tensors", why="it may be a vocabulary-only GGUF", fix="use the model's complete GGUF file")
    return GGUFFile(path, reader, meta)


_open_cached = lru_cache(maxsize=4)(_open)


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


def check_gguf_file(path: Path) -> dict[str, Any]:
    """Validate a GGUF file's header, metadata and tensor table; return a few facts.

    Raises :class:`DataError` for anything that is not a complete, well-formed GGUF file.
    """
    return read_gguf(path)[1]


def read_gguf(path: Path) -> tuple[Any, dict[str, Any]]:
    """:func:`check_gguf_file`, also returning the ``gguf.GGUFReader`` it validated.

    Parsing the metadata of a large vocabulary costs seconds, so a validated file of at least
    :data:`CACHE_MIN_BYTES` is remembered per (path, size, modification time) for this process; a
    changed file is read again, and small files (cheap to parse) are read every time.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise DataError(f"no GGUF file at {path}", fix="check the path, or export the model again")
    st = path.stat()
    read = _read_gguf_cached if st.st_size >= CACHE_MIN_BYTES else _read_gguf
    reader, facts = read(str(path), st.st_size, st.st_mtime_ns)
    return reader, dict(facts)



def _read_gguf(name: str, size: int, mtime_ns: int) -> tuple[Any, dict[str, Any]]:
    path = Path(name)
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] != GGUF_MAGIC:
        raise DataError(f"{path.name} is not a GGUF file", why="it does not start with the GGUF magic bytes", fix="export the model again (slmops export gguf)")
    if len(head) < 8:
        raise DataError(f"{path.name} is truncated", why=f"it has {size} bytes, fewer than a GGUF header", fix="export the model again (slmops export gguf)")
    gguf = require("gguf", extra="gguf", purpose="reading GGUF files")
    try:
        reader = gguf.GGUFReader(str(path), "r")
        arch = reader.fields.get("general.architecture")
        tensors = list(reader.tensors)
        end = max((int(t.data_offset) + int(t.n_bytes) for t in tensors), default=0)
    except Exception as exc:  # the reader raises ValueError, struct.error, IndexError… on damaged files
        raise DataError(f"{path.name} is damaged", why=f"{type(exc).__name__}: {exc}"[:300], fix="export the model again (slmops export gguf)") from exc
    if end > size:
        raise DataError(f"{path.name} is truncated", why=f"its tensors need {end} bytes but the file has {size}", fix="export the model again")
    facts: dict[str, Any] = {"tensors": len(tensors), "bytes": size}
    if arch is not None:
        try:
            facts["architecture"] = bytes(arch.parts[arch.data[0]]).decode()
        except (IndexError, UnicodeDecodeError) as exc:
            raise DataError(f"{path.name} is damaged", why="general.architecture is unreadable", fix="export the model again") from exc
    kind = reader.fields.get("general.type")
    if kind is not None:
        facts["type"] = bytes(kind.parts[kind.data[0]]).decode(errors="replace")
    stops = reader.fields.get("slmops.stop_token_ids")
    if stops is not None:
        facts["stop_token_ids"] = [int(stops.parts[i][0]) for i in stops.data]
    return reader, facts


_read_gguf_cached = lru_cache(maxsize=8)(_read_gguf)


def locate_gguf(path: Path) -> tuple[Path, list[tuple[Path, float, str]], dict[str, Any]]:
    """(model file, [(adapter file, scale, name)], sidecar) for a .gguf file or a folder holding one."""
    path = Path(path)
    if path.is_file():
        return path, [], {}
    if not path.is_dir():
        raise ConfigError(f"no GGUF model at {path}", fix="point at a .gguf file or an export.gguf artifact")
    side = path / SIDECAR
    if side.is_file():
        try:
            meta = json.loads(side.read_text())
            model = path / meta["model"]
            adapters = [(path / a["file"], float(a.get("scale", 1.0)), str(a.get("name", Path(a["file"]).stem))) for a in meta.get("adapters", [])]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{side} is damaged", why=str(exc), fix="export the model again") from exc
        return model, adapters, meta
    files = sorted(p for p in path.glob("*.gguf") if not p.name.startswith("adapter"))
    if len(files) != 1:
        raise ConfigError(f"{path} holds {len(files)} model .gguf files", fix="point at one .gguf file")
    return files[0], [], {}


@contextmanager
def writing_gguf(writer: Any, out_path: Path) -> Iterator[None]:
    """Write ``writer``'s header and metadata to ``out_path.partial``; the block writes the tensors.

    On success the file is renamed to ``out_path``; on any failure the partial file is removed, so a
    half-written GGUF is never visible. A full disk becomes a :class:`StoreError` with the fix.
    """
    out_path = Path(out_path)
    partial = out_path.with_name(out_path.name + ".partial")
    try:
        writer.write_header_to_file(path=partial)
        writer.write_kv_data_to_file()
        yield
        writer.close()
        os.replace(partial, out_path)
    except OSError as exc:
        writer.close()
        partial.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreError(f"no space left on the disk while writing {out_path.name}", why=str(exc),
                             fix="free disk space, or point SLMOPS_HOME at a bigger disk, and run the export again") from exc
        raise
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
