"""Shared access to llama.cpp through llama-cpp-python's C bindings (``llama_cpp``).

* :func:`lib` imports the bindings once (through ``require``, naming the ``[gguf]`` extra),
  initialises the backend and routes llama.cpp's own log into Python logging
  (``slmops.llamacpp``, debug level) instead of stderr.
* :func:`recent_problems` returns the warnings and errors llama.cpp logged lately, so a failed
  load or quantization can say *why* (llama.cpp reports failures only through its log and a null
  pointer or a non-zero code).
* :func:`locate_gguf` finds the model file and LoRA adapters of an export (``gguf.json``), and
  :func:`default_threads` picks a thread count for a model's size.
* :func:`check_gguf_file` validates a GGUF file's structure in Python (with ``gguf.GGUFReader``)
  before llama.cpp maps it, so a damaged or truncated file is a clear error, not a crash.

Used by the llama.cpp runtime and by the GGUF quantizer.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import os
import threading
from collections import deque
from pathlib import Path
from typing import Any

from slmops._optional import require
from slmops.errors import ConfigError, DataError

log = logging.getLogger("slmops.llamacpp")

_WARN, _ERROR = 3, 4  # ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5
_lock = threading.Lock()
_state: dict[str, Any] = {"lib": None, "callback": None}
_recent: deque[str] = deque(maxlen=40)
GGUF_MAGIC = b"GGUF"
SIDECAR = "gguf.json"
BYTES_PER_THREAD = 64 << 20


def lib() -> Any:
    """The ``llama_cpp`` module, initialised, with its log routed to Python logging."""
    if _state["lib"] is not None:
        return _state["lib"]
    with _lock:
        if _state["lib"] is None:
            L = require("llama_cpp", extra="gguf", purpose="running or quantizing GGUF models with llama.cpp")

            @L.llama_log_callback
            def _callback(level: int, text: bytes, user_data: Any) -> None:
                msg = text.decode("utf-8", errors="replace").rstrip("\n")
                if level in (_WARN, _ERROR) and msg.strip():
                    _recent.append(msg.strip())
                if msg.strip():
                    log.debug("%s", msg)

            L.llama_log_set(_callback, ctypes.c_void_p(0))
            L.llama_backend_init()
            _state["callback"] = _callback  # keep a reference: llama.cpp calls it from C
            _state["lib"] = L
    return _state["lib"]


class _PoolParams(ctypes.Structure):
    _fields_ = [("cpumask", ctypes.c_bool * 512), ("n_threads", ctypes.c_int), ("prio", ctypes.c_int), ("poll", ctypes.c_uint32),
                ("strict_cpu", ctypes.c_bool), ("paused", ctypes.c_bool)]  # ggml.h: struct ggml_threadpool_params


def _ggml_cpu() -> Any:
    """libggml-cpu (already loaded by libllama) with the threadpool functions typed; None when not found."""
    if "ggml_cpu" not in _state:
        L = lib()
        found = None
        for folder in (Path(L.__file__).parent / "lib", Path(L.__file__).parent):
            for name in ("libggml-cpu.so", "libggml-cpu.dylib", "ggml-cpu.dll"):
                if (folder / name).is_file():
                    found = folder / name
                    break
            if found:
                break
        cpu = None
        if found is not None:
            try:
                cpu = ctypes.CDLL(str(found))
                base = ctypes.CDLL(str(found.with_name(found.name.replace("ggml-cpu", "ggml-base"))))
                base.ggml_threadpool_params_init.argtypes = [ctypes.POINTER(_PoolParams), ctypes.c_int]
                base.ggml_threadpool_params_init.restype = None
                cpu.ggml_threadpool_new.argtypes = [ctypes.POINTER(_PoolParams)]
                cpu.ggml_threadpool_new.restype = ctypes.c_void_p
                cpu.ggml_threadpool_free.argtypes = [ctypes.c_void_p]
                cpu.ggml_threadpool_free.restype = None
                L._lib.llama_attach_threadpool.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
                L._lib.llama_attach_threadpool.restype = None
                cpu._params_init = base.ggml_threadpool_params_init
            except (OSError, AttributeError) as exc:
                log.debug("no ggml threadpool API: %s", exc)
                cpu = None
        _state["ggml_cpu"] = cpu
    return _state["ggml_cpu"]


def attach_threadpool(ctx: Any, n_threads: int) -> Any:
    """Give ``ctx`` a persistent ggml threadpool of ``n_threads`` (as llama-server does); the pool, or None.

    Without one, a ggml built without OpenMP starts and joins its worker threads for every
    ``llama_decode`` — a cost per token that grows on a busy machine (with OpenMP, as the PyPI
    wheels and source builds usually are, the pool only holds state). Free it with
    :func:`free_threadpool` after the context.
    """
    cpu = _ggml_cpu()
    if cpu is None:
        return None
    params = _PoolParams()
    cpu._params_init(ctypes.byref(params), int(n_threads))  # ggml's defaults: normal priority, poll 50, as llama-server
    pool = cpu.ggml_threadpool_new(ctypes.byref(params))
    if not pool:
        return None
    lib()._lib.llama_attach_threadpool(ctypes.cast(ctx, ctypes.c_void_p), pool, pool)
    return pool


def free_threadpool(pool: Any) -> None:
    cpu = _ggml_cpu()
    if pool and cpu is not None:
        cpu.ggml_threadpool_free(pool)


def clear_problems() -> None:
    _recent.clear()


def recent_problems(limit: int = 3) -> str:
    """The last few warnings/errors llama.cpp logged, joined (most informative last)."""
    lines = [ln for ln in _recent if ln]
    return " | ".join(lines[-limit:]) if lines else "llama.cpp gave no reason (run with -vv to see its log)"


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


CACHE_MIN_BYTES = 32 << 20


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


_read_gguf_cached = functools.lru_cache(maxsize=8)(_read_gguf)


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


def default_threads(model_bytes: int) -> int:
    """Threads for a model of this size: one per ``BYTES_PER_THREAD`` of weights, at most the physical cores.

    llama.cpp's threads synchronise at every operation; for a small model that costs more than it
    saves, and on a busy machine (more runnable threads than cores) spinning threads can slow a
    decode step a hundredfold, so small models get one thread.
    """
    import psutil

    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    return max(1, min(cores, model_bytes // BYTES_PER_THREAD))
