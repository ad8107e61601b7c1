"""Pruning plans and weight surgery: which layers, channels, neurons and heads a smaller model keeps.

:func:`plan_dims` checks the requested dimensions against the teacher's (one-line errors naming
the flag: a shrink that would leave no layer, head or channel is refused before any work) and
fills in what was left unset. :func:`choose` turns measured importance into kept indices:

* layers — the ``num_layers`` with the highest block influence, in their original order;
* hidden channels — the ``hidden_size`` most important, one choice for the whole model (the
  residual stream is shared), applied to the embedding, every projection, every norm and the head
  (a tied head stays tied: it is the same sliced matrix);
* MLP neurons — per kept layer, the ``intermediate_size`` most important;
* heads — per kept layer, GQA-aware: the ``num_kv_heads`` KV groups whose query heads matter most,
  and inside each the ``num_heads / num_kv_heads`` most important query heads, so every kept query
  head still reads the keys and values it was trained with. The head dimension is unchanged.

:func:`slice_tensor` maps each parameter of the smaller model to a slice of the teacher's; fused
phi3 projections (``qkv_proj``, ``gate_up_proj``) are sliced part by part. RMSNorm weights over
fewer channels are optionally rescaled by ``sqrt(f · H / H')`` (``f`` = the share of the norm's
input energy the kept channels carry), so the normalised output keeps its scale.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from slmops.errors import ConfigError
from slmops.models.importance import Importance

SUPPORTED = ("llama", "mistral", "qwen2", "phi3")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def teacher_dims(config: Any) -> dict[str, int]:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return {
        "num_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_heads": heads,
        "num_kv_heads": getattr(config, "num_key_value_heads", None) or heads,
        "head_dim": head_dim,
    }


def plan_dims(config: Any, requested: dict[str, int | None]) -> dict[str, int]:
    """The student's dimensions: ``requested`` values checked against the teacher's ``config``."""
    if config.model_type not in SUPPORTED:
        raise ConfigError(
            f"models.shrink does not support the {config.model_type!r} architecture",
            fix=f"shrink a model of one of: {', '.join(SUPPORTED)}",
        )
    t = teacher_dims(config)
    if all(v is None for v in requested.values()):
        raise ConfigError(
            "nothing to shrink: no target dimension was given",
            fix=f"pass --num-layers (teacher: {t['num_layers']}), --hidden-size ({t['hidden_size']}), "
            f"--intermediate-size ({t['intermediate_size']}), --num-heads ({t['num_heads']}) or --num-kv-heads ({t['num_kv_heads']})",
        )
    what = {"num_layers": "layer", "hidden_size": "hidden channel", "intermediate_size": "MLP neuron", "num_heads": "attention head", "num_kv_heads": "KV head"}
    for key, value in requested.items():
        if value is None:
            continue
        if value < 1:
            raise ConfigError(
                f"{_flag(key)} {value} would leave fewer than one {what[key]}", fix=f"use {_flag(key)} between 1 and {t[key]} (the teacher's)"
            )
        if value > t[key]:
            raise ConfigError(f"{_flag(key)} {value} is larger than the teacher's {t[key]}", fix=f"use {_flag(key)} between 1 and {t[key]}")
    d = {k: (requested.get(k) if requested.get(k) is not None else t[k]) for k in what}
    group = t["num_heads"] // t["num_kv_heads"]
    q, kv = requested.get("num_heads"), requested.get("num_kv_heads")
    if kv is not None and q is None:
        d["num_heads"] = kv * group
    elif q is not None and kv is None:
        d["num_kv_heads"] = next(k for k in range(min(t["num_kv_heads"], q), 0, -1) if q % k == 0 and q // k <= group)
    if d["num_heads"] % d["num_kv_heads"]:
        raise ConfigError(
            f"--num-heads {d['num_heads']} is not a multiple of --num-kv-heads {d['num_kv_heads']}",
            why="grouped-query attention shares each KV head among the same number of query heads",
            fix=f"use a --num-heads that --num-kv-heads {d['num_kv_heads']} divides",
        )
    if d["num_heads"] // d["num_kv_heads"] > group:
        raise ConfigError(
            f"--num-heads {d['num_heads']} with --num-kv-heads {d['num_kv_heads']} needs {d['num_heads'] // d['num_kv_heads']} query heads per KV group",
            why=f"the teacher's groups hold {group}, and a query head can only keep the keys and values it was trained with",
            fix=f"use at most {d['num_kv_heads'] * group} --num-heads, or more --num-kv-heads",
        )
    d["head_dim"] = t["head_dim"]
    return d


@dataclass
class Plan:
    """Kept indices into the teacher's dimensions (sorted), per kept layer where they differ by layer."""

    layers: list[int]
    hidden: list[int]
    neurons: dict[int, list[int]]
    heads: dict[int, list[int]]
    kv_heads: dict[int, list[int]]
    dims: dict[str, int]
    norm_scale: dict[str, float] = field(default_factory=dict)

    def removed_layers(self, n: int) -> list[int]:
        return [i for i in range(n) if i not in self.layers]


def _top(scores: list[float], k: int) -> list[int]:
    """Indices of the ``k`` largest scores, ascending (ties: the lower index first)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(order[:k])


def choose(imp: Importance, config: Any, dims: dict[str, int], *, rescale_norms: bool = True) -> Plan:
    """Kept layers, channels, neurons and heads for ``dims`` from the measured importance."""
    t = teacher_dims(config)
    layers = _top(imp.block_influence, dims["num_layers"])
    hidden = _top(imp.hidden, dims["hidden_size"])
    neurons = {i: _top(imp.neurons[i], dims["intermediate_size"]) for i in layers}
    group, new_group = t["num_heads"] // t["num_kv_heads"], dims["num_heads"] // dims["num_kv_heads"]
    heads: dict[int, list[int]] = {}
    kv_heads: dict[int, list[int]] = {}
    for i in layers:
        scores = imp.heads[i]
        groups = [sum(scores[g * group : (g + 1) * group]) for g in range(t["num_kv_heads"])]
        kv_heads[i] = _top(groups, dims["num_kv_heads"])
        heads[i] = [g * group + h for g in kv_heads[i] for h in _top(scores[g * group : (g + 1) * group], new_group)]
    scale: dict[str, float] = {}
    if rescale_norms and dims["hidden_size"] < t["hidden_size"]:
        ratio = t["hidden_size"] / dims["hidden_size"]
        for name, energy in imp.energy.items():
            total = sum(energy)
            kept = sum(energy[c] for c in hidden)
            scale[name] = math.sqrt(kept / total * ratio) if total > 0 else 1.0
    return Plan(layers, hidden, neurons, heads, kv_heads, dims, scale)


def student_config(config: Any, plan: Plan) -> Any:
    """A copy of the teacher's config with the student's dimensions (per-layer lists cut to the kept layers)."""
    new = config.__class__.from_dict(config.to_dict())
    d = plan.dims
    new.num_hidden_layers = d["num_layers"]
    new.hidden_size = d["hidden_size"]
    new.intermediate_size = d["intermediate_size"]
    new.num_attention_heads = d["num_heads"]
    new.num_key_value_heads = d["num_kv_heads"]
    new.head_dim = d["head_dim"]
    if isinstance(getattr(new, "layer_types", None), list) and len(new.layer_types) == config.num_hidden_layers:
        new.layer_types = [config.layer_types[i] for i in plan.layers]
    if getattr(new, "max_window_layers", None) is not None:
        new.max_window_layers = min(new.max_window_layers, d["num_layers"])
    return new


def _rows(idx: list[int], size: int) -> list[int]:
    """Rows of whole heads ``idx`` of ``size`` rows each."""
    return [h * size + r for h in idx for r in range(size)]


def slice_tensor(name: str, teacher: dict[str, Any], plan: Plan, config: Any) -> Any:
    """The student's parameter ``name`` cut from the teacher's state dict."""
    t = teacher_dims(config)
    hd = t["head_dim"]
    h = plan.hidden
    m = _LAYER.match(name)
    if m is None:
        src = teacher[name]
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            return src[:, h]
        if name == "model.norm.weight":
            return src[h] * plan.norm_scale.get("norm", 1.0)
        if name == "lm_head.bias":
            return src
        raise ConfigError(f"models.shrink does not know how to cut the parameter {name}", fix=f"shrink a model of one of: {', '.join(SUPPORTED)}")
    j, rest = int(m.group(1)), m.group(2)
    i = plan.layers[j]
    src = teacher[f"model.layers.{i}.{rest}"]
    q_rows, kv_rows, neurons = _rows(plan.heads[i], hd), _rows(plan.kv_heads[i], hd), plan.neurons[i]
    part = rest.rsplit(".", 1)
    module, kind = part[0], part[1]
    if module in ("input_layernorm", "post_attention_layernorm"):
        return src[h] * plan.norm_scale.get(f"layers.{i}.{module}", 1.0)
    rows_cols: dict[str, tuple[list[int] | None, list[int] | None]] = {
        "self_attn.q_proj": (q_rows, h),
        "self_attn.k_proj": (kv_rows, h),
        "self_attn.v_proj": (kv_rows, h),
        "self_attn.o_proj": (h, q_rows),
        "mlp.gate_proj": (neurons, h),
        "mlp.up_proj": (neurons, h),
        "mlp.down_proj": (h, neurons),
        "self_attn.qkv_proj": (
            q_rows + [t["num_heads"] * hd + r for r in kv_rows] + [(t["num_heads"] + t["num_kv_heads"]) * hd + r for r in kv_rows],
            h,
        ),
        "mlp.gate_up_proj": (neurons + [t["intermediate_size"] + n for n in neurons], h),
    }
    if module not in rows_cols:
        raise ConfigError(f"models.shrink does not know how to cut the parameter {name}", fix=f"shrink a model of one of: {', '.join(SUPPORTED)}")
    rows, cols = rows_cols[module]
    out = src[rows] if rows is not None else src
    if kind == "weight" and cols is not None:
        out = out[:, cols]
    return out.contiguous()


def plan_facts(plan: Plan, config: Any) -> dict[str, Any]:
    """What the plan removed and kept, for the manifest (indices of layers; counts of the rest)."""
    t = teacher_dims(config)
    return {
        "teacher_dims": t,
        "student_dims": plan.dims,
        "kept_layers": plan.layers,
        "removed_layers": plan.removed_layers(t["num_layers"]),
        "kept_hidden_channels": len(plan.hidden),
        "kept_intermediate_channels": plan.dims["intermediate_size"],
        "kept_heads": plan.dims["num_heads"],
        "kept_kv_heads": plan.dims["num_kv_heads"],
        "norms_rescaled": bool(plan.norm_scale),
    }
