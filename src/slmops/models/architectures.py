"""Real architectures (Llama, Qwen2, Phi-3) at tiny and small sizes, as transformers configs.

``tiny`` is for tests (hidden 64, 2 layers, 4 heads, ~0.2M parameters with a 2k vocabulary);
``small`` is for benchmarks (hidden 256, 6 layers, 8 heads, ≥5M parameters). Llama and Qwen2 use
grouped-query attention (half as many KV heads as query heads) and tie their embeddings like the
small real models of those families (Llama-3.2-1B, Qwen2.5-0.5B); Phi-3 uses full multi-head
attention and an untied head like Phi-3-mini. Every dimension can be overridden.

transformers 5 takes ``dtype`` (not ``torch_dtype``) and ``rope_parameters`` (a dict with
``rope_type`` and ``rope_theta``; Phi-3 adds ``partial_rotary_factor``) instead of the v4
``rope_theta``/``rope_scaling`` attributes; this module writes the v5 form.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from slmops._optional import require

Arch = Literal["llama", "qwen2", "phi3"]
Size = Literal["tiny", "small"]
ARCHES: tuple[str, ...] = ("llama", "qwen2", "phi3")

#: size -> default dimensions (KV heads depend on the architecture, see :func:`resolve_dims`).
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 128, "context_length": 512},
    "small": {"hidden_size": 256, "num_layers": 6, "num_heads": 8, "intermediate_size": 768, "context_length": 1024},
}
_CONFIG_CLASS = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "phi3": "Phi3Config"}
_MODEL_CLASS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "phi3": "Phi3ForCausalLM"}


class ArchitectureConfig(BaseModel):
    """Which architecture and how big; unset dimensions come from the ``size`` preset."""

    model_config = ConfigDict(extra="forbid")

    arch: Arch = Field("llama", description="Model architecture: llama, qwen2 or phi3")
    size: Size = Field("tiny", description="Preset: tiny (tests, ~0.2M params) or small (benchmarks, >=5M params)")
    hidden_size: int | None = Field(None, ge=8, le=16384, description="Hidden size (default from the size preset)")
    num_layers: int | None = Field(None, ge=1, le=256, description="Number of transformer layers")
    num_heads: int | None = Field(None, ge=1, le=256, description="Attention heads")
    num_kv_heads: int | None = Field(None, ge=1, le=256, description="Key/value heads (GQA); default: half the heads for llama/qwen2, all for phi3")
    intermediate_size: int | None = Field(None, ge=8, le=65536, description="MLP intermediate size")
    context_length: int | None = Field(None, ge=16, le=1 << 20, description="Maximum sequence length (max_position_embeddings)")
    tie_word_embeddings: bool | None = Field(None, description="Share input embedding and LM head (default: true for llama/qwen2, false for phi3)")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base frequency")

    @model_validator(mode="after")
    def _check_heads(self) -> ArchitectureConfig:
        d = resolve_dims(self)
        if d["hidden_size"] % d["num_heads"]:
            raise ValueError(f"hidden_size {d['hidden_size']} is not a multiple of num_heads {d['num_heads']}")
        if (d["hidden_size"] // d["num_heads"]) % 2:
            raise ValueError("head dimension (hidden_size / num_heads) must be even for rotary embeddings")
        if d["num_heads"] % d["num_kv_heads"]:
            raise ValueError(f"num_heads {d['num_heads']} is not a multiple of num_kv_heads {d['num_kv_heads']}")
        return self


def resolve_dims(spec: ArchitectureConfig) -> dict[str, Any]:
    """The final dimensions of ``spec``: preset values with the overrides applied."""
    dims: dict[str, Any] = dict(PRESETS[spec.size])
    for key in dims:
        if (v := getattr(spec, key)) is not None:
            dims[key] = v
    default_kv = dims["num_heads"] if spec.arch == "phi3" else max(1, dims["num_heads"] // 2)
    dims["num_kv_heads"] = spec.num_kv_heads if spec.num_kv_heads is not None else default_kv
    dims["tie_word_embeddings"] = spec.tie_word_embeddings if spec.tie_word_embeddings is not None else spec.arch != "phi3"
    dims["head_dim"] = dims["hidden_size"] // dims["num_heads"]
    return dims


def build_config(
    spec: ArchitectureConfig,
    *,
    vocab_size: int,
    bos_token_id: int | None,
    eos_token_id: int,
    pad_token_id: int,
    dtype: str = "float32",
) -> Any:
    """The transformers config (``LlamaConfig``/``Qwen2Config``/``Phi3Config``) for ``spec``."""
    tf = require("transformers", extra="train", purpose="building a model config")
    d = resolve_dims(spec)
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": spec.rope_theta}
    common: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": d["hidden_size"],
        "intermediate_size": d["intermediate_size"],
        "num_hidden_layers": d["num_layers"],
        "num_attention_heads": d["num_heads"],
        "num_key_value_heads": d["num_kv_heads"],
        "max_position_embeddings": d["context_length"],
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "tie_word_embeddings": d["tie_word_embeddings"],
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "use_cache": True,
        "dtype": dtype,
        "architectures": [_MODEL_CLASS[spec.arch]],
    }
    if spec.arch == "llama":
        extra: dict[str, Any] = {"rms_norm_eps": 1e-6, "rope_parameters": rope, "attention_bias": False, "mlp_bias": False, "head_dim": d["head_dim"]}
    elif spec.arch == "qwen2":
        extra = {
            "rms_norm_eps": 1e-6,
            "rope_parameters": rope,
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": d["num_layers"],
        }
    else:
        extra = {
            "rms_norm_eps": 1e-5,
            "rope_parameters": {**rope, "partial_rotary_factor": 1.0},
            "original_max_position_embeddings": d["context_length"],
            "sliding_window": None,
        }
    return getattr(tf, _CONFIG_CLASS[spec.arch])(**common, **extra)


def estimate_parameters(spec: ArchitectureConfig, vocab_size: int) -> int:
    """Parameter count of ``spec`` computed from its dimensions (no torch needed)."""
    d = resolve_dims(spec)
    h, kv = d["hidden_size"], d["num_kv_heads"] * d["head_dim"]
    attn = h * h * 2 + h * kv * 2 + (h + 2 * kv if spec.arch == "qwen2" else 0)
    mlp = 3 * h * d["intermediate_size"]
    layer = attn + mlp + 2 * h
    embed = vocab_size * h * (1 if d["tie_word_embeddings"] else 2)
    return d["num_layers"] * layer + embed + h
