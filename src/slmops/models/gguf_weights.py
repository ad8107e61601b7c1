"""A GGUF file's tensors dequantized into Hugging Face safetensors, names and row order restored.

Each tensor is turned back into floats by ``gguf.quants.dequantize`` (the ``gguf`` library's own
reference dequantizers, the ones llama.cpp's Python tools use), renamed with the inverse of the
exporter's table (:func:`slmops.models.gguf_arch.hf_module_of`) and, for ``llama``, has its q/k
rows put back from llama.cpp's interleaved-pair rotary layout into transformers' half-rotation
layout (:func:`~slmops.models.gguf_arch.unpermute_rows`). Tensors are written in shards of at most
``max_shard_bytes``, so memory stays near one shard however large the model is.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from slmops import progress
from slmops._optional import require
from slmops.errors import ConfigError, DataError
from slmops.models.gguf_arch import HParams, hf_module_of, required_tensors, unpermute_rows
from slmops.models.gguf_file import GGUFFile

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")
_SKIP = {"rope_freqs.weight"}  # read back as rope scaling (gguf_config)
SHARD_BYTES = 2 << 30


def read_tensor(f: GGUFFile, name: str) -> np.ndarray:
    """Tensor ``name`` of ``f`` as float32, in numpy (row-major, HF) shape."""
    gguf = require("gguf", extra="gguf", purpose="reading GGUF files")
    t = next((t for t in f.tensors if t.name == name), None)
    if t is None:
        raise DataError(f"{f.path.name} has no tensor {name}", fix="use the model's complete GGUF file")
    shape = tuple(int(d) for d in reversed(t.shape.tolist()))
    try:
        arr = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
    except NotImplementedError as exc:
        raise ConfigError(f"{f.path.name}: tensor {name} is {t.tensor_type.name}, which slmops cannot dequantize", why=str(exc),
                          fix=f"import it as GGUF instead (slmops models import {f.path.name} without --to hf)") from exc
    except (ValueError, TypeError) as exc:
        raise DataError(f"{f.path.name}: tensor {name} is damaged", why=f"{type(exc).__name__}: {exc}"[:300],
                        fix="download or copy the file again") from exc
    return np.asarray(arr, dtype=np.float32).reshape(shape)


def hf_tensor_name(gguf_name: str, hp: HParams) -> str:
    """The HF state-dict name of a GGUF tensor; ConfigError for a tensor the architecture does not have."""
    base, _, kind = gguf_name.rpartition(".")
    module = hf_module_of(base, hp.spec) if kind in ("weight", "bias") else None
    if module is None:
        raise ConfigError(
            f"tensor {gguf_name} has no Hugging Face counterpart in the {hp.gguf_arch} architecture",
            why="slmops maps only the standard tensors of llama, qwen2 and phi3 models",
            fix="import it as GGUF instead (without --to hf); llama.cpp runs it as is",
        )
    return f"{module}.{kind}"


def _restore(arr: np.ndarray, gguf_name: str, hp: HParams) -> np.ndarray:
    if hp.spec.permute_qk and gguf_name.endswith((".attn_q.weight", ".attn_q.bias")):
        return unpermute_rows(arr, hp.num_heads)
    if hp.spec.permute_qk and gguf_name.endswith((".attn_k.weight", ".attn_k.bias")):
        return unpermute_rows(arr, hp.num_kv_heads)
    return arr


def plan_tensors(f: GGUFFile, hp: HParams) -> list[tuple[str, str]]:
    """``[(gguf name, hf name)]`` for every tensor to write; DataError when one the model needs is missing."""
    names = [t.name for t in f.tensors]
    missing = [n for n in required_tensors(hp) if n not in names]
    if missing:
        raise DataError(f"{f.path.name} lacks {len(missing)} tensor(s) a {hp.gguf_arch} model needs, e.g. {', '.join(missing[:3])}",
                        fix="use the model's complete GGUF file")
    return [(n, hf_tensor_name(n, hp)) for n in names if n not in _SKIP]


def write_weights(f: GGUFFile, hp: HParams, out: Path, *, dtype: str = "float32", max_shard_bytes: int = SHARD_BYTES) -> dict[str, Any]:
    """Dequantize every tensor of ``f`` into ``out`` as safetensors; return facts (parameters, shards)."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not supported", fix=f"use one of {', '.join(DTYPES)}")
    torch = require("torch", extra="train", purpose="writing safetensors weights")
    st = require("safetensors.torch", extra="train", purpose="writing safetensors weights")
    tdtype = getattr(torch, dtype)
    plan = plan_tensors(f, hp)
    shards: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    size = params = 0

    def flush() -> None:
        nonlocal current, size
        if current:
            shards.append(current)
            name = f"model-{len(shards):05d}.safetensors"
            st.save_file(current, str(out / name), metadata={"format": "pt"})
            log.debug("wrote %s (%d tensors)", name, len(current))
        current, size = {}, 0

    with progress.task("dequantize", total=len(plan)) as bar:
        for gguf_name, hf_name in plan:
            arr = _restore(read_tensor(f, gguf_name), gguf_name, hp)
            arr = np.ascontiguousarray(arr)
            t = torch.from_numpy(arr if arr.flags.writeable else arr.copy()).to(tdtype)
            nbytes = t.numel() * t.element_size()
            if current and size + nbytes > max_shard_bytes:
                flush()
            current[hf_name] = t
            size += nbytes
            params += t.numel()
            bar.advance()
    written = len(shards) + (1 if current else 0)
    index: dict[str, str] = {}
    names = [list(s) for s in shards] + ([list(current)] if current else [])
    flush()
    if written == 1:
        (out / "model-00001.safetensors").rename(out / "model.safetensors")
    else:
        for i, keys in enumerate(names, 1):
            final = f"model-{i:05d}-of-{written:05d}.safetensors"
            (out / f"model-{i:05d}.safetensors").rename(out / final)
            index.update({k: final for k in keys})
        (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}, indent=2, sort_keys=True) + "\n")
    return {"parameters": params, "tensors": len(plan), "shards": written, "dtype": dtype}
