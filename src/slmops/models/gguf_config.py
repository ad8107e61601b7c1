"""A GGUF file's hyper-parameters read back as a Hugging Face ``config.json`` (transformers 5 naming).

The inverse of :func:`slmops.models.gguf_arch.write_hparams`: the same :class:`HParams` and
architecture table (:data:`~slmops.models.gguf_arch.ARCH_SPECS`), read from llama.cpp's keys
(``llama.block_count``, ``llama.attention.head_count_kv``, ``llama.rope.freq_base`` …). A GGUF
architecture slmops cannot map (anything but llama — which Mistral GGUFs also are — qwen2 and
phi3) is a :class:`~slmops.errors.ConfigError` naming the file and the fix.

Llama-3.1-style rope scaling is stored by llama.cpp only as a ``rope_freqs`` tensor of divisors; it
is read back by matching that tensor against :func:`~slmops.models.gguf_arch.llama3_rope_freqs`
with Llama 3's published constants, and refused when it matches none.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from slmops.errors import ConfigError, DataError
from slmops.models.gguf_arch import ARCH_SPECS, HParams, hf_architecture_of, llama3_rope_freqs
from slmops.models.gguf_file import GGUFFile

#: GGUF architecture -> transformers ``model_type``.
MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "phi3": "phi3"}
_LLAMA3_GUESSES = [(8192, 1.0, 4.0)]  # (original context, low_freq_factor, high_freq_factor) of Llama 3.1/3.2


def _f32(v: Any) -> float:
    """A float32 GGUF value as the shortest decimal that rounds to it (1e-06, not 9.99999997e-07)."""
    return float(str(np.float32(v)))


def supported(f: GGUFFile) -> str:
    """The GGUF architecture of ``f`` when slmops can rebuild an HF model from it; else ConfigError."""
    if f.arch in ARCH_SPECS and hf_architecture_of(f.arch):
        return f.arch
    raise ConfigError(
        f"{f.path.name} is a {f.arch!r} model, which slmops cannot turn into a Hugging Face folder",
        why=f"GGUF → HF supports the architectures {', '.join(sorted(ARCH_SPECS))} (Mistral GGUFs are 'llama')",
        fix=f"import it as GGUF instead (slmops models import {f.path.name} without --to hf); llama.cpp runs it as is",
    )


def _tensor_shape(f: GGUFFile, name: str) -> tuple[int, ...] | None:
    for t in f.tensors:
        if t.name == name:
            return tuple(int(d) for d in reversed(t.shape.tolist()))
    return None


def read_gguf_hparams(f: GGUFFile) -> HParams:
    """Normalised hyper-parameters of a GGUF model (the same :class:`HParams` the exporter writes)."""
    arch = supported(f)
    embd = _tensor_shape(f, "token_embd.weight")
    if embd is None:
        raise DataError(f"{f.path.name} has no token_embd.weight", why="every llama/qwen2/phi3 model has an input embedding",
                        fix="use the model's complete GGUF file")
    try:
        hidden = int(f.get("embedding_length"))
        heads = int(f.get("attention.head_count"))
        head_dim = int(f.get("attention.key_length") or hidden // heads)
        scaling: dict[str, Any] = {}
        kind = f.get("rope.scaling.type")
        if kind in ("linear", "yarn"):
            scaling = {"rope_type": kind, "factor": _f32(f.get("rope.scaling.factor"))}
            if kind == "yarn" and f.get("rope.scaling.original_context_length"):
                scaling["original_max_position_embeddings"] = int(f.get("rope.scaling.original_context_length"))
        elif kind not in (None, "none"):
            raise ConfigError(f"{f.path.name} uses rope scaling {kind!r}", why="slmops reads back linear, yarn and llama3 rope scaling",
                              fix=f"import it as GGUF instead (slmops models import {f.path.name} without --to hf)")
        hp = HParams(
            hf_arch=str(hf_architecture_of(arch)),
            spec=ARCH_SPECS[arch],
            hidden_size=hidden,
            num_layers=int(f.get("block_count")),
            num_heads=heads,
            num_kv_heads=int(f.get("attention.head_count_kv") or heads),
            head_dim=head_dim,
            intermediate_size=int(f.get("feed_forward_length")),
            context_length=int(f.get("context_length") or 2048),
            rms_norm_eps=_f32(f.get("attention.layer_norm_rms_epsilon") or 1e-6),
            rope_theta=_f32(f.get("rope.freq_base") or 10000.0),
            rope_dims=int(f.get("rope.dimension_count") or head_dim),
            vocab_size=embd[0],
            tie_word_embeddings=_tensor_shape(f, "output.weight") is None,
            rope_scaling=scaling,
            original_context_length=f.get("rope.scaling.original_context_length"),
            sliding_window=f.get("attention.sliding_window"),
        )
    except (TypeError, ValueError) as exc:
        raise DataError(f"{f.path.name} lacks a hyper-parameter a {arch} model needs", why=f"{type(exc).__name__}: {exc}",
                        fix="use a GGUF written by llama.cpp's converter or slmops export gguf") from exc
    if _tensor_shape(f, "rope_freqs.weight") is not None:
        hp.rope_scaling = _llama3_scaling(f, hp)
    return hp


def _llama3_scaling(f: GGUFFile, hp: HParams) -> dict[str, Any]:
    from slmops.models.gguf_weights import read_tensor

    freqs = read_tensor(f, "rope_freqs.weight").reshape(-1)
    factor = _f32(freqs.max())
    for orig, low, high in _LLAMA3_GUESSES:
        s = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high, "original_max_position_embeddings": orig}
        trial = HParams(**{**hp.__dict__, "rope_scaling": s})
        if np.allclose(llama3_rope_freqs(trial), freqs, rtol=1e-4):
            return s
    raise ConfigError(f"{f.path.name} has rope_freqs that match no Llama-3 rope scaling slmops knows",
                      fix=f"import it as GGUF instead (slmops models import {f.path.name} without --to hf)")


def hf_config(hp: HParams, *, bos_id: int | None, eos_id: int | None, pad_id: int | None = None) -> dict[str, Any]:
    """The ``config.json`` fields (transformers 5 style) of ``hp``."""
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": hp.rope_theta, **hp.rope_scaling}
    cfg: dict[str, Any] = {
        "architectures": [hp.hf_arch],
        "model_type": MODEL_TYPES[hp.gguf_arch],
        "vocab_size": hp.vocab_size,
        "hidden_size": hp.hidden_size,
        "intermediate_size": hp.intermediate_size,
        "num_hidden_layers": hp.num_layers,
        "num_attention_heads": hp.num_heads,
        "num_key_value_heads": hp.num_kv_heads,
        "head_dim": hp.head_dim,
        "max_position_embeddings": hp.context_length,
        "rms_norm_eps": hp.rms_norm_eps,
        "tie_word_embeddings": hp.tie_word_embeddings,
        "hidden_act": "silu",
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
    }
    if hp.gguf_arch == "phi3":
        rope["partial_rotary_factor"] = hp.rope_dims / hp.head_dim
        cfg["original_max_position_embeddings"] = int(hp.original_context_length or hp.context_length)
        cfg["sliding_window"] = hp.sliding_window
    elif hp.gguf_arch == "qwen2":
        cfg["use_sliding_window"] = False
    elif hp.rope_dims != hp.head_dim:
        raise ConfigError(f"a {hp.gguf_arch} model with rotary dimension {hp.rope_dims} ≠ head dimension {hp.head_dim} has no transformers equivalent",
                          fix="import it as GGUF instead (without --to hf)")
    cfg["rope_parameters"] = rope
    return cfg


def write_config(cfg: dict[str, Any], out: Any) -> None:
    """Save ``cfg`` through transformers' own config class (so defaults and naming are its own)."""
    from slmops._optional import require

    tf = require("transformers", extra="train", purpose="writing a Hugging Face model folder")
    fields = {k: v for k, v in cfg.items() if k != "model_type"}
    tf.AutoConfig.for_model(cfg["model_type"], **fields).save_pretrained(str(out))
