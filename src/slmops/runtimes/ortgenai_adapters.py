"""Run-time LoRA adapters for ONNX Runtime GenAI: the model's LoRA inputs, PEFT → ``.onnx_adapter``.

A model exported with ``export.onnx adapter_mode=runtime`` has, for every LoRA-adapted projection,
two float graph inputs named like the model builder's weights::

    model.layers.3.attn.q_proj.lora_A.MatMul.weight   [in, rank]
    model.layers.3.attn.q_proj.lora_B.MatMul.weight   [rank, out]   (already multiplied by the LoRA scale)

whose defaults are zeros (so with no adapter active the model is its base). An ``.onnx_adapter``
file (ONNX Runtime's adapter format) holds values for those inputs; ORT GenAI feeds them when the
adapter is active on a generator. :func:`peft_to_params` converts any PEFT LoRA adapter trained
on the same base into those values (transposing, applying ``lora_alpha / r`` — or ``/ sqrt(r)``
for rsLoRA — and splitting Phi-3's fused ``qkv_proj``/``gate_up_proj``), so adapters trained after
the export can be served without re-exporting the model.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from slmops._optional import require
from slmops.errors import ConfigError

LORA_INPUT = re.compile(r"\.lora_[AB]\.")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.(self_attn|attn|mlp)\.(\w+)$")
_FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def lora_inputs(onnx_file: Path) -> dict[str, tuple[Any, tuple[Any, ...]]]:
    """LoRA graph inputs of ``onnx_file``: name → (numpy dtype, shape with ``lora_rank`` symbolic)."""
    onnx = require("onnx", extra="onnx", purpose="reading an ONNX model's inputs")
    from onnx import helper

    model = onnx.load(str(onnx_file), load_external_data=False)
    out: dict[str, tuple[Any, tuple[Any, ...]]] = {}
    for vi in model.graph.input:
        if LORA_INPUT.search(vi.name):
            t = vi.type.tensor_type
            dims = tuple(d.dim_param or d.dim_value for d in t.shape.dim)
            out[vi.name] = (np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)), dims)
    return out


def _onnx_prefix(module: str) -> tuple[str, str] | None:
    """(``model.layers.{i}.{attn|mlp}``, leaf) for a PEFT module path; None for anything else."""
    m = _LAYER.search(module)
    if m is None:
        return None
    group = "attn" if m.group(2) in ("self_attn", "attn") else "mlp"
    return f"model.layers.{m.group(1)}.{group}", m.group(3)


def _scale(cfg: dict[str, Any], module: str, rank: int) -> float:
    alpha = float(cfg.get("lora_alpha") or rank)
    for pattern, value in (cfg.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){pattern}$", module):
            alpha = float(value)
    return alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank


def check_peft_lora(adapter_dir: Path) -> dict[str, Any]:
    """The adapter's ``adapter_config.json``; refuse what cannot run as ONNX LoRA inputs."""
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        raise ConfigError(f"{adapter_dir} is not a PEFT adapter folder", why="it has no adapter_config.json", fix="pass an adapter artifact")
    cfg = json.loads(path.read_text(encoding="utf-8"))
    problems = []
    if cfg.get("peft_type") != "LORA":
        problems.append(f"it is a {cfg.get('peft_type')} adapter, not LoRA")
    if cfg.get("use_dora"):
        problems.append("it is a DoRA adapter (its magnitude vector is not a LoRA product)")
    if cfg.get("modules_to_save"):
        problems.append(f"it also trains whole modules ({', '.join(cfg['modules_to_save'])})")
    if cfg.get("bias") not in (None, "none"):
        problems.append(f"it trains biases (bias={cfg['bias']})")
    if problems:
        raise ConfigError(
            "this adapter cannot be switched at run time in ONNX Runtime GenAI",
            why="; ".join(problems),
            fix="export with --adapter-mode merge (the adapter is merged into the weights before export)",
        )
    return cfg


def peft_to_params(adapter_dir: Path, inputs: dict[str, tuple[Any, tuple[Any, ...]]]) -> dict[str, np.ndarray]:
    """Values for the model's LoRA ``inputs`` from a PEFT LoRA adapter folder (see the module docstring)."""
    safetensors = require("safetensors.numpy", extra="train", purpose="reading a PEFT adapter")
    cfg = check_peft_lora(adapter_dir)
    files = sorted(Path(adapter_dir).glob("adapter_model*.safetensors"))
    if not files:
        raise ConfigError(f"{adapter_dir} has no adapter_model.safetensors", fix="save the adapter with safe_serialization=True")
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        tensors.update(safetensors.load_file(str(f)))
    modules: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        m = re.match(r"(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$", key)
        if m is None:
            continue
        modules.setdefault(m.group(1), {})[m.group(2)] = value.astype(np.float32)
    params: dict[str, np.ndarray] = {}
    unknown: list[str] = []
    for module, ab in sorted(modules.items()):
        where = _onnx_prefix(module)
        if where is None or "A" not in ab or "B" not in ab:
            unknown.append(module)
            continue
        prefix, leaf = where
        a, b = ab["A"], ab["B"] * _scale(cfg, module, ab["A"].shape[0])
        parts = _FUSED.get(leaf, (leaf,))
        if len(parts) == 1:
            pieces = [b]
        else:
            sizes = [inputs.get(f"{prefix}.{p}.lora_B.MatMul.weight", (None, (0, 0)))[1][-1] for p in parts]
            if not all(isinstance(s, int) and s > 0 for s in sizes) or sum(sizes) != b.shape[0]:
                unknown.append(module)
                continue
            pieces = np.split(b, np.cumsum(sizes)[:-1], axis=0)
        for part, piece in zip(parts, pieces, strict=True):
            na, nb = f"{prefix}.{part}.lora_A.MatMul.weight", f"{prefix}.{part}.lora_B.MatMul.weight"
            if na not in inputs or nb not in inputs:
                unknown.append(f"{module} ({part})")
                continue
            params[na] = np.ascontiguousarray(a.T).astype(inputs[na][0])
            params[nb] = np.ascontiguousarray(piece.T).astype(inputs[nb][0])
    if unknown or not params:
        raise ConfigError(
            "the adapter does not fit this ONNX model's LoRA inputs",
            why=(f"no LoRA input for {', '.join(unknown[:4])}" + (" …" if len(unknown) > 4 else "")) if unknown else "it has no LoRA weights",
            fix="re-export the model with --adapter-mode runtime and an adapter that targets the same modules, or merge this one",
        )
    return params


def write_adapter(params: dict[str, np.ndarray], path: Path) -> Path:
    """Write ``params`` as an ONNX Runtime ``.onnx_adapter`` file."""
    ort = require("onnxruntime", extra="onnx", purpose="writing an ONNX Runtime adapter")
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for k, v in params.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt.export_adapter(str(path))
    return path
