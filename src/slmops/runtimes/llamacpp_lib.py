"""Shared access to llama.cpp through llama-cpp-python's C bindings (``llama_cpp``).

* :func:`lib` imports the bindings once (through ``require``, naming the ``[gguf]`` extra),
  initialises the backend and routes llama.cpp's own log into Python logging
  (``slmops.llamacpp``, debug level) instead of stderr.
* :func:`recent_problems` returns the warnings and errors llama.cpp logged lately, so a failed
  load or quantization can say *why* (llama.cpp reports failures only through its log and a null
  pointer or a non-zero code).
* :func:`default_threads` picks a thread count for a model's size.
* :func:`engine_timings` reads llama.cpp's own timings of a context (shared by the runtime and the batcher).
* :func:`model_params` gives the parameters every model load uses: CPU only, and without ggml's AMX
  weight buffers where the build has them (they crash the process, llama.cpp issue #20824).

Reading and validating GGUF files in Python (``check_gguf_file``, ``locate_gguf``) is
:mod:`slmops.models.gguf_file`'s, below the runtimes.

Used by the llama.cpp runtime and by the GGUF quantizer.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections import deque
from pathlib import Path
from typing import Any

from slmops._optional import require
from slmops.settings import env_flag

log = logging.getLogger("slmops.llamacpp")

_WARN, _ERROR = 3, 4  # ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5
_lock = threading.Lock()
_state: dict[str, Any] = {"lib": None, "callback": None}
_recent: deque[str] = deque(maxlen=40)
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


def _libllama(L: Any) -> Any:
    """The ctypes handle of libllama itself (llama-cpp-python keeps it in ``llama_cpp.llama_cpp._lib``, not re-exported)."""
    inner = getattr(L, "llama_cpp", None)
    return getattr(L, "_lib", None) or getattr(inner, "_lib", None)


def _ggml_cpu() -> Any:
    """libggml-cpu (already loaded by libllama), with the threadpool functions typed where they exist; None when not found."""
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
            except OSError as exc:
                log.debug("cannot open %s: %s", found, exc)
        if cpu is not None:
            try:
                base = ctypes.CDLL(str(found.with_name(found.name.replace("ggml-cpu", "ggml-base"))))  # type: ignore[union-attr]
                llama = _libllama(L)
                base.ggml_threadpool_params_init.argtypes = [ctypes.POINTER(_PoolParams), ctypes.c_int]
                base.ggml_threadpool_params_init.restype = None
                cpu.ggml_threadpool_new.argtypes = [ctypes.POINTER(_PoolParams)]
                cpu.ggml_threadpool_new.restype = ctypes.c_void_p
                cpu.ggml_threadpool_free.argtypes = [ctypes.c_void_p]
                cpu.ggml_threadpool_free.restype = None
                llama.llama_attach_threadpool.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
                llama.llama_attach_threadpool.restype = None
                cpu._params_init = base.ggml_threadpool_params_init
                cpu._attach = llama.llama_attach_threadpool
            except (OSError, AttributeError) as exc:
                log.debug("no ggml threadpool API: %s", exc)
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
    if cpu is None or not hasattr(cpu, "_attach"):
        return None
    params = _PoolParams()
    cpu._params_init(ctypes.byref(params), int(n_threads))  # ggml's defaults: normal priority, poll 50, as llama-server
    pool = cpu.ggml_threadpool_new(ctypes.byref(params))
    if not pool:
        return None
    cpu._attach(ctypes.cast(ctx, ctypes.c_void_p), pool, pool)
    return pool


AMX_ENV = "SLMOPS_LLAMACPP_AMX"


def amx_kernels() -> bool:
    """True when the loaded llama.cpp was built with AMX kernels (``-march=native`` on a Sapphire Rapids-class CPU)."""
    cpu = _ggml_cpu()
    probe = getattr(cpu, "ggml_cpu_has_amx_int8", None) if cpu is not None else None
    return bool(probe()) if probe is not None else False


def model_params() -> Any:
    """llama.cpp's default model parameters for a load on the CPU.

    Where the build has AMX kernels, the extra weight buffers (AMX, and with them the repacked
    layouts) are off: ggml's AMX matrix multiply crashes the whole process with a segmentation
    fault on the first decode on such machines (llama.cpp issue #20824, closed unfixed; seen here
    on a Xeon with ``amx_int8``, and by llama-server on the same file). ``SLMOPS_LLAMACPP_AMX=1``
    turns them back on for a llama.cpp where that is fixed. llama-server's ``--no-repack`` is the same switch.
    """
    L = lib()
    mp = L.llama_model_default_params()
    mp.n_gpu_layers = 0
    if amx_kernels() and not env_flag(AMX_ENV):
        log.info("llama.cpp has AMX kernels: weight repacking is off (llama.cpp #20824; %s=1 turns it on)", AMX_ENV)
        mp.use_extra_bufts = False
    return mp


def free_threadpool(pool: Any) -> None:
    cpu = _ggml_cpu()
    if pool and cpu is not None:  # a pool exists only where attach_threadpool could make one
        cpu.ggml_threadpool_free(pool)


def engine_timings(ctx: Any, *, reset: bool = False) -> dict[str, float]:
    """llama.cpp's own timings of ``ctx`` since its last reset (``llama_perf_context``; the context needs ``no_perf`` off):
    prompt and decode ms and token counts, and how many compute graphs were reused instead of rebuilt."""
    L = lib()
    p = L.llama_perf_context(ctx)
    if reset:
        L.llama_perf_context_reset(ctx)
    return {"prompt_ms": p.t_p_eval_ms, "prompt_tokens": p.n_p_eval, "decode_ms": p.t_eval_ms, "decode_tokens": p.n_eval,
            "graphs_reused": p.n_reused}


def clear_problems() -> None:
    _recent.clear()


def recent_problems(limit: int = 3) -> str:
    """The last few warnings/errors llama.cpp logged, joined (most informative last)."""
    lines = [ln for ln in _recent if ln]
    return " | ".join(lines[-limit:]) if lines else "llama.cpp gave no reason (run with -vv to see its log)"


def default_threads(model_bytes: int) -> int:
    """Threads for a model of this size: one per ``BYTES_PER_THREAD`` of weights, at most the physical cores.

    llama.cpp's threads synchronise at every operation; for a small model that costs more than it
    saves, and on a busy machine (more runnable threads than cores) spinning threads can slow a
    decode step a hundredfold, so small models get one thread.
    """
    import psutil

    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    return max(1, min(cores, model_bytes // BYTES_PER_THREAD))
