"""What a Hugging Face architecture becomes in GGUF: its llama.cpp name, hyper-parameters and tensor names.

Supported: ``LlamaForCausalLM`` (and ``MistralForCausalLM``, which llama.cpp runs as ``llama``),
``Qwen2ForCausalLM`` and ``Phi3ForCausalLM``. The keys and tensor names are llama.cpp's (see
``gguf.constants``); the mapping itself lives here, in one table per family:

* **llama** — separate q/k/v/o and gate/up/down projections. llama.cpp applies rotary embeddings to
  *interleaved* pairs (``LLAMA_ROPE_TYPE_NORM``) while transformers rotates *halves*, so the rows
  of ``q_proj``/``k_proj`` (and of their LoRA ``B`` matrices) are permuted on the way out.
* **qwen2** — like llama plus q/k/v biases; NEOX rotary (halves), so no permutation.
* **phi3** — fused ``qkv_proj`` → ``attn_qkv`` and fused ``gate_up_proj`` → ``ffn_up`` (llama.cpp
  splits them itself); NEOX rotary.

Everything else (another architecture, an unknown tensor, an unsupported rope scaling) is a
:class:`~slmops.errors.ConfigError` naming what is not supported, before anything is written.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slmops.errors import ConfigError, DataError

#: transformers class -> GGUF architecture.
HF_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Phi3ForCausalLM": "phi3",
}
#: config.json ``model_type`` -> GGUF architecture (used when ``architectures`` is missing).
MODEL_TYPES: dict[str, str] = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "phi3": "phi3"}

_COMMON_LAYER = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.o_proj": "attn_output",
    "mlp.down_proj": "ffn_down",
}
_SPLIT_LAYER = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
}
_FUSED_LAYER = {"self_attn.qkv_proj": "attn_qkv", "mlp.gate_up_proj": "ffn_up"}
_GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
#: HF tensors that carry no weights llama.cpp needs.
_SKIP = re.compile(r"(^|\.)rotary_emb\.inv_freq$|(^|\.)(masked_bias|attn\.bias)$")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_TOP = re.compile(r"^(.+)\.(weight|bias)$")


@dataclass(frozen=True)
class ArchSpec:
    """How one family maps to GGUF."""

    gguf_arch: str
    layer_map: dict[str, str]
    permute_qk: bool  # llama: transformers' half-rotation -> llama.cpp's interleaved pairs


ARCH_SPECS: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama", {**_COMMON_LAYER, **_SPLIT_LAYER}, permute_qk=True),
    "qwen2": ArchSpec("qwen2", {**_COMMON_LAYER, **_SPLIT_LAYER}, permute_qk=False),
    "phi3": ArchSpec("phi3", {**_COMMON_LAYER, **_FUSED_LAYER}, permute_qk=False),
}


@dataclass
class HParams:
    """The hyper-parameters of a model folder, normalised across transformers 4 and 5 config styles."""

    hf_arch: str
    spec: ArchSpec
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    context_length: int
    rms_norm_eps: float
    rope_theta: float
    rope_dims: int
    vocab_size: int
    tie_word_embeddings: bool
    rope_scaling: dict[str, Any] = field(default_factory=dict)
    original_context_length: int | None = None
    sliding_window: int | None = None

    @property
    def gguf_arch(self) -> str:
        return self.spec.gguf_arch


def architecture_of(config: dict[str, Any]) -> tuple[str, str]:
    """``(hf class, gguf arch)`` of a config.json; :class:`ConfigError` when llama.cpp export does not support it."""
    archs = config.get("architectures") or []
    for a in archs:
        if a in HF_ARCHITECTURES:
            return a, HF_ARCHITECTURES[a]
    mt = config.get("model_type")
    if not archs and mt in MODEL_TYPES:
        return str(mt), MODEL_TYPES[mt]
    shown = ", ".join(archs) or f"model_type {mt!r}"
    raise ConfigError(
        f"cannot export {shown} to GGUF",
        why=f"slmops' GGUF converter supports {', '.join(sorted(HF_ARCHITECTURES))}",
        fix="export this model to ONNX instead (slmops export onnx), or convert it with llama.cpp's own convert_hf_to_gguf.py",
    )


def _rope(config: dict[str, Any]) -> tuple[float, dict[str, Any], float]:
    """(rope theta, scaling dict, partial rotary factor) from a v5 ``rope_parameters`` or v4 ``rope_theta``/``rope_scaling``."""
    params = config.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" in params:
        theta = float(params["rope_theta"])
        scaling = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
        partial = float(params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) or 1.0)
    else:
        theta = float(config.get("rope_theta", 10000.0))
        scaling = dict(config.get("rope_scaling") or {})
        partial = float(config.get("partial_rotary_factor", 1.0) or 1.0)
    if "type" in scaling and "rope_type" not in scaling:
        scaling["rope_type"] = scaling.pop("type")
    if scaling.get("rope_type") in (None, "default"):
        scaling = {}
    return theta, scaling, partial


def read_hparams(config: dict[str, Any]) -> HParams:
    """Normalised hyper-parameters of ``config`` (a parsed config.json)."""
    hf_arch, gguf_arch = architecture_of(config)
    try:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        theta, scaling, partial = _rope(config)
        head_dim = int(config.get("head_dim") or hidden // heads)
        hp = HParams(
            hf_arch=hf_arch,
            spec=ARCH_SPECS[gguf_arch],
            hidden_size=hidden,
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=head_dim,
            intermediate_size=int(config["intermediate_size"]),
            context_length=int(config.get("max_position_embeddings") or 2048),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_dims=int(head_dim * partial),
            vocab_size=int(config["vocab_size"]),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            rope_scaling=scaling,
            original_context_length=config.get("original_max_position_embeddings"),
            sliding_window=config.get("sliding_window") if config.get("use_sliding_window", True) else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError("config.json is missing a hyper-parameter GGUF needs", why=f"{type(exc).__name__}: {exc}", fix="check the model folder's config.json") from exc
    kind = scaling.get("rope_type")
    if kind not in (None, "linear", "llama3", "yarn"):
        raise ConfigError(
            f"rope scaling {kind!r} is not supported by slmops' GGUF converter",
            why="only default, linear, llama3 and yarn rope scaling are mapped",
            fix="convert this model with llama.cpp's convert_hf_to_gguf.py",
        )
    return hp


def layout_hparams(gguf_arch: str, num_heads: int, num_kv_heads: int) -> HParams:
    """Just enough hyper-parameters to name and permute LoRA tensors for a model known only by its GGUF."""
    return HParams(hf_arch=gguf_arch, spec=ARCH_SPECS[gguf_arch], hidden_size=0, num_layers=0, num_heads=num_heads, num_kv_heads=num_kv_heads,
                   head_dim=0, intermediate_size=0, context_length=0, rms_norm_eps=0.0, rope_theta=0.0, rope_dims=0, vocab_size=0,
                   tie_word_embeddings=False)


def write_hparams(writer: Any, hp: HParams) -> None:
    """Add the architecture's hyper-parameter keys to a ``gguf.GGUFWriter``."""
    gguf = _gguf()
    writer.add_context_length(hp.context_length)
    writer.add_embedding_length(hp.hidden_size)
    writer.add_block_count(hp.num_layers)
    writer.add_feed_forward_length(hp.intermediate_size)
    writer.add_head_count(hp.num_heads)
    writer.add_head_count_kv(hp.num_kv_heads)
    writer.add_layer_norm_rms_eps(hp.rms_norm_eps)
    writer.add_rope_freq_base(hp.rope_theta)
    writer.add_rope_dimension_count(hp.rope_dims)
    if hp.head_dim != hp.hidden_size // hp.num_heads:
        writer.add_key_length(hp.head_dim)
        writer.add_value_length(hp.head_dim)
    if hp.gguf_arch == "llama":
        writer.add_vocab_size(hp.vocab_size)
    if hp.gguf_arch == "phi3":
        writer.add_rope_scaling_orig_ctx_len(int(hp.original_context_length or hp.context_length))
        if hp.sliding_window:
            writer.add_sliding_window(int(hp.sliding_window))
    kind = hp.rope_scaling.get("rope_type")
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(hp.rope_scaling["factor"]))
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(hp.rope_scaling["factor"]))
        orig = hp.rope_scaling.get("original_max_position_embeddings") or hp.original_context_length
        if orig:
            writer.add_rope_scaling_orig_ctx_len(int(orig))


def llama3_rope_freqs(hp: HParams) -> np.ndarray:
    """The ``rope_freqs`` tensor of Llama-3.1-style rope scaling (per-frequency divisors)."""
    s = hp.rope_scaling
    factor, low, high = float(s.get("factor", 8.0)), float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
    old_ctx = float(s.get("original_max_position_embeddings", 8192))
    base, dim = hp.rope_theta, hp.rope_dims
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the output rows of a q/k projection from half-rotation to interleaved-pair layout."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of :func:`permute_rows`: interleaved-pair rows (llama.cpp) back to half-rotation (transformers)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_module_of(gguf_base: str, spec: ArchSpec) -> str | None:
    """The HF module path of a GGUF tensor name without its suffix (``blk.3.attn_q`` → ``model.layers.3.self_attn.q_proj``); the inverse of :func:`gguf_base_name`."""
    m = re.match(r"^blk\.(\d+)\.(.+)$", gguf_base)
    if m:
        sub = next((hf for hf, g in spec.layer_map.items() if g == m.group(2)), None)
        return f"model.layers.{m.group(1)}.{sub}" if sub else None
    return next((hf for hf, g in _GLOBAL.items() if g == gguf_base), None)


def hf_architecture_of(gguf_arch: str) -> str | None:
    """The transformers class a GGUF architecture is read back as (``llama`` → ``LlamaForCausalLM``: Mistral GGUFs are ``llama`` too)."""
    return next((hf for hf, g in HF_ARCHITECTURES.items() if g == gguf_arch), None)


@dataclass(frozen=True)
class TensorTarget:
    """Where one HF tensor goes: its GGUF name and the row transform it needs."""

    name: str
    transform: Callable[[np.ndarray], np.ndarray] | None = None


def gguf_base_name(hf_module: str, hp: HParams) -> str | None:
    """GGUF tensor name (without ``.weight``) of an HF module path such as ``model.layers.0.self_attn.q_proj``."""
    m = re.match(r"^model\.layers\.(\d+)\.(.+)$", hf_module)
    if m:
        sub = hp.spec.layer_map.get(m.group(2))
        return f"blk.{m.group(1)}.{sub}" if sub else None
    return _GLOBAL.get(hf_module)


def map_tensor(hf_name: str, hp: HParams) -> TensorTarget | None:
    """The GGUF target of an HF tensor; None for tensors llama.cpp does not need; ConfigError for unknown ones."""
    if _SKIP.search(hf_name):
        return None
    if hf_name == "lm_head.weight" and hp.tie_word_embeddings:
        return None  # tied: llama.cpp reuses token_embd
    if m := _LAYER.match(hf_name):
        module, kind = f"model.layers.{m[1]}.{m[2]}", m[3]
    elif t := _TOP.match(hf_name):
        module, kind = t[1], t[2]
    else:
        module, kind = hf_name, ""
    base = gguf_base_name(module, hp) if kind else None
    if base is None:
        raise ConfigError(
            f"tensor {hf_name} has no GGUF counterpart in the {hp.gguf_arch} architecture",
            why="slmops maps only the standard tensors of llama, qwen2 and phi3 models",
            fix="check the model is an unmodified llama/qwen2/phi3 (or mistral) checkpoint",
        )
    transform = None
    if hp.spec.permute_qk and base.endswith(".attn_q"):
        transform = _permuter(hp.num_heads)
    elif hp.spec.permute_qk and base.endswith(".attn_k"):
        transform = _permuter(hp.num_kv_heads)
    return TensorTarget(f"{base}.{kind}", transform)


def _permuter(n_head: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda w: permute_rows(w, n_head)


def _gguf() -> Any:
    from slmops._optional import require

    return require("gguf", extra="gguf", purpose="writing GGUF files")


def json_config(folder: Path, file: str, *, what: str, missing_fix: str, restore_fix: str) -> dict[str, Any]:
    """``folder/file`` as a JSON object: ConfigError when it is missing (``folder`` is not ``what``), DataError when unreadable."""
    path = folder / file
    if not path.is_file():
        raise ConfigError(f"{folder} is not {what}", why=f"it has no {file}", fix=missing_fix)
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path} is not valid JSON", why=str(exc), fix=restore_fix) from exc
    if not isinstance(cfg, dict):
        raise DataError(f"{path} is not a configuration", why="its top level is not a JSON object", fix=restore_fix)
    return cfg


def read_config(folder: Path) -> dict[str, Any]:
    """A Hugging Face folder's ``config.json`` as a dict (ConfigError / DataError naming the fix)."""
    return json_config(folder, "config.json", what="a Hugging Face model folder", missing_fix="pass a model artifact (models.init, models.import or a fine-tune)",
                       restore_fix="restore config.json from the original model")


def required_tensors(hp: HParams) -> list[str]:
    """The GGUF tensors a llama/qwen2/phi3 model of ``hp`` cannot run without."""
    per_layer = ["attn_norm", "attn_output", "ffn_norm", "ffn_down", "ffn_up"]
    per_layer += ["attn_qkv"] if hp.gguf_arch == "phi3" else ["attn_q", "attn_k", "attn_v", "ffn_gate"]
    names = ["token_embd.weight", "output_norm.weight"] + ([] if hp.tie_word_embeddings else ["output.weight"])
    return names + [f"blk.{i}.{t}.weight" for i in range(hp.num_layers) for t in per_layer]
