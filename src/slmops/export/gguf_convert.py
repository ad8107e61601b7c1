"""Hugging Face folder → GGUF (f32 or f16), written with the ``gguf`` library and streamed tensor by tensor.

:func:`convert_to_gguf` reads ``config.json`` (:mod:`~slmops.models.gguf_arch`), the tokenizer
files (:mod:`~slmops.models.gguf_vocab`) and the safetensors weights, checks that every tensor
llama.cpp will ask for is there, and writes ``<out>.partial`` before renaming it: a failure (an
unsupported model, a corrupt file, a full disk, Ctrl-C) never leaves a GGUF behind. Quantized types
are made from this f32 file by llama.cpp itself (:mod:`~slmops.export.gguf_quantize`).

Weights come from a :class:`TensorSource`: the folder's safetensors files (read one tensor at a time,
so memory stays near one tensor's size) or an in-memory state dict (a PEFT adapter merged into its base).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from slmops import progress
from slmops._optional import require
from slmops.errors import ConfigError, DataError
from slmops.models.gguf_arch import (
    HParams,
    TensorTarget,
    llama3_rope_freqs,
    map_tensor,
    read_config,
    read_hparams,
    required_tensors,
    write_hparams,
)
from slmops.models.gguf_file import writing_gguf
from slmops.models.gguf_vocab import fit_to_embedding, read_vocab, write_vocab

log = logging.getLogger(__name__)

OUTTYPES = ("f32", "f16")
_FILE_TYPES = {"f32": 0, "f16": 1}  # llama_ftype ALL_F32, MOSTLY_F16
EMBED = "model.embed_tokens.weight"


class TensorSource(Protocol):
    """Named weight tensors: their names, shapes, and float32 values on demand."""

    def names(self) -> list[str]: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def get(self, name: str) -> np.ndarray: ...


class SafetensorsSource:
    """The ``*.safetensors`` files of a model folder (sharded or not), read lazily."""

    def __init__(self, folder: Path) -> None:
        st = require("safetensors", extra="train", purpose="reading safetensors weights")
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise ConfigError(f"{folder} has no *.safetensors weights", fix="import the model with `slmops models import` (it converts pickles when allowed)")
        self._handles: dict[str, Any] = {}
        self._where: dict[str, Any] = {}
        for f in files:
            try:
                h = st.safe_open(str(f), framework="pt")
                keys = list(h.keys())
            except Exception as exc:  # safetensors raises SafetensorError / OSError
                raise DataError(f"{f.name} is not a readable safetensors file", why=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                                fix="restore the weights from the original model") from exc
            self._handles[f.name] = h
            for k in keys:
                self._where[k] = h

    def names(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in self._where[name].get_slice(name).get_shape())

    def get(self, name: str) -> np.ndarray:
        try:
            t = self._where[name].get_tensor(name)
        except Exception as exc:
            raise DataError(f"cannot read tensor {name}", why=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                            fix="the weights file is damaged; restore it from the original model") from exc
        return t.float().numpy() if hasattr(t, "float") else np.asarray(t, dtype=np.float32)


class MappingSource:
    """An in-memory state dict (torch tensors or numpy arrays)."""

    def __init__(self, tensors: Mapping[str, Any]) -> None:
        self._t = dict(tensors)

    def names(self) -> list[str]:
        return list(self._t)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in self._t[name].shape)

    def get(self, name: str) -> np.ndarray:
        t = self._t[name]
        return t.detach().float().cpu().numpy() if hasattr(t, "detach") else np.asarray(t, dtype=np.float32)


@dataclass(frozen=True)
class _Planned:
    gguf_name: str
    hf_name: str | None
    shape: tuple[int, ...]
    target: TensorTarget | None
    dtype: Any  # numpy dtype written


def gguf_model_name(name: str, *, phi3_tokens_ok: bool) -> str:
    """``general.name`` for the file. llama.cpp gives any model whose name contains "phi3"/"phi-3" the
    Phi-3 special-token treatment (and fails without Phi-3's ``<|endoftext|>``), so that text is kept
    only for tokenizers that are really Phi-3's."""
    return name if phi3_tokens_ok else re.sub(r"(?i)phi-?3", "phi", name)


def _plan(src: TensorSource, hp: HParams, outtype: str) -> list[_Planned]:
    plan: list[_Planned] = []
    seen: set[str] = set()
    for hf in sorted(src.names()):
        target = map_tensor(hf, hp)
        if target is None:
            continue
        layer = re.match(r"^blk\.(\d+)\.", target.name)
        if layer and int(layer.group(1)) >= hp.num_layers:
            raise DataError(f"tensor {hf} belongs to a layer the config does not have", why=f"config.json says num_hidden_layers={hp.num_layers}",
                            fix="check config.json matches the weights")
        shape = src.shape(hf)
        dtype = np.float16 if outtype == "f16" and len(shape) >= 2 else np.float32
        plan.append(_Planned(target.name, hf, shape, target, dtype))
        seen.add(target.name)
    missing = [n for n in required_tensors(hp) if n not in seen]
    if missing:
        raise DataError(
            f"the weights lack {len(missing)} tensor(s) llama.cpp needs, e.g. {', '.join(missing[:3])}",
            why="the safetensors files and config.json do not describe the same model",
            fix="re-save the model with save_pretrained, or check the folder is complete (all shards present)",
        )
    if hp.rope_scaling.get("rope_type") == "llama3":
        plan.append(_Planned("rope_freqs.weight", None, (hp.rope_dims // 2,), None, np.float32))
    return plan


def convert_to_gguf(
    folder: Path,
    out_path: Path,
    *,
    outtype: str = "f32",
    name: str | None = None,
    source: TensorSource | None = None,
    pre_tokenizer: str | None = None,
    drop_extra_tokens: bool = False,
) -> dict[str, Any]:
    """Write ``folder``'s model as a GGUF file at ``out_path``; return facts for the manifest."""
    if outtype not in OUTTYPES:
        raise ConfigError(f"outtype {outtype!r} is not written directly", fix=f"use one of {', '.join(OUTTYPES)}; quantized types go through llama.cpp")
    gguf = require("gguf", extra="gguf", purpose="writing GGUF files")
    folder = Path(folder)
    hp = read_hparams(read_config(folder))
    vocab = read_vocab(folder, pre_tokenizer=pre_tokenizer)
    src = source if source is not None else SafetensorsSource(folder)
    if EMBED not in src.names():
        raise DataError(f"the weights have no {EMBED}", why="every llama/qwen2/phi3 checkpoint has an input embedding", fix="check the folder holds the full model")
    rows = src.shape(EMBED)[0]
    if rows != hp.vocab_size:
        log.warning("config.json says vocab_size %d but the embedding has %d rows; using the embedding", hp.vocab_size, rows)
        hp.vocab_size = rows
    dropped = fit_to_embedding(vocab, rows, drop_extra_tokens=drop_extra_tokens)
    plan = _plan(src, hp, outtype)
    phi3_ok = vocab.rstrip_specials and all(t in vocab.tokens for t in ("<unk>", "<s>", "</s>", "<|endoftext|>"))
    general_name = gguf_model_name(name or folder.name, phi3_tokens_ok=phi3_ok)

    writer = gguf.GGUFWriter(path=None, arch=hp.gguf_arch)
    writer.add_type("model")
    writer.add_name(general_name)
    writer.add_file_type(_FILE_TYPES[outtype])
    write_hparams(writer, hp)
    write_vocab(writer, vocab)
    for p in plan:
        writer.add_tensor_info(p.gguf_name, p.shape, np.dtype(p.dtype), int(np.prod(p.shape)) * np.dtype(p.dtype).itemsize)
    out_path = Path(out_path)
    with writing_gguf(writer, out_path):
        writer.write_ti_data_to_file()
        with progress.task(f"GGUF {outtype}", total=len(plan)) as bar:
            for p in plan:
                arr = src.get(p.hf_name) if p.hf_name is not None else llama3_rope_freqs(hp)
                if p.target is not None and p.target.transform is not None:
                    arr = p.target.transform(arr)
                writer.write_tensor_data(np.ascontiguousarray(arr, dtype=p.dtype))
                bar.advance()
    params = sum(int(np.prod(p.shape)) for p in plan if p.hf_name is not None)
    return {
        "arch": hp.gguf_arch,
        "hf_architecture": hp.hf_arch,
        "outtype": outtype,
        "tensors": len(plan),
        "parameters": params,
        "vocab_size": vocab.size,
        "tokenizer_model": vocab.model,
        "pre_tokenizer": vocab.pre,
        "add_bos": vocab.add_bos,
        "chat_template": vocab.chat_template is not None,
        "stop_token_ids": vocab.stop_ids,
        "dropped_tokens": dropped,
        "general_name": general_name,
        "context_length": hp.context_length,
        "file_bytes": out_path.stat().st_size,
    }
