"""PEFT LoRA adapter → GGUF LoRA that llama.cpp (and Ollama's ``ADAPTER``) applies at run time.

A GGUF LoRA holds, for every adapted weight ``blk.N.<name>.weight``, the tensors
``blk.N.<name>.weight.lora_a`` (PEFT's ``lora_A``, ``[r, in]``) and ``….lora_b`` (``lora_B``,
``[out, r]``), plus ``general.type = "adapter"``, ``adapter.type = "lora"`` and
``adapter.lora.alpha``. llama.cpp scales each pair by ``alpha / r``; PEFT scales by ``alpha / r``
too, or ``alpha / sqrt(r)`` with rsLoRA, with per-module ranks and alphas allowed — any
difference is folded into ``lora_b`` so the product is exactly PEFT's.

The tensor names follow the base model's GGUF (:mod:`~slmops.models.gguf_arch`), including the
Llama q/k row permutation applied to ``lora_b``. Not representable, and refused with a clear
error: DoRA, LoRA on embeddings or the LM head, trained biases, and ``modules_to_save``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from slmops._optional import require
from slmops.errors import ConfigError, DataError, UnsafeInput
from slmops.models.gguf_arch import HParams, gguf_base_name, json_config, permute_rows, read_config, read_hparams
from slmops.models.gguf_file import writing_gguf

_KEY = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_(A|B)(?:\.[A-Za-z0-9_-]+)?\.weight$")


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    """A PEFT adapter's ``adapter_config.json``, refused when a GGUF LoRA cannot carry what it trained."""
    cfg = json_config(adapter_dir, "adapter_config.json", what="a PEFT adapter", missing_fix="pass an adapter artifact (made by a LoRA fine-tune)",
                      restore_fix="restore the adapter from its fine-tune")
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise ConfigError(f"{cfg.get('peft_type')} adapters cannot become GGUF LoRAs", why="llama.cpp applies LoRA adapters only", fix="merge the adapter into the base model (export gguf --merge-adapter)")
    for flag, what in (("use_dora", "DoRA"), ("modules_to_save", "modules_to_save (fully trained modules)")):
        if cfg.get(flag):
            raise ConfigError(f"this adapter uses {what}, which a GGUF LoRA cannot carry",
                              fix="merge the adapter into the base model instead: slmops export gguf MODEL --adapter A --merge-adapter")
    if cfg.get("bias", "none") not in ("none", None):
        raise ConfigError("this adapter trains biases, which a GGUF LoRA cannot carry", fix="merge the adapter into the base model instead (--merge-adapter)")
    return cfg


def _scaling(cfg: dict[str, Any], module: str) -> tuple[int, float]:
    """(rank, PEFT scaling factor) for ``module``, honouring rank_pattern / alpha_pattern / rsLoRA."""
    r, alpha = int(cfg.get("r", 8)), float(cfg.get("lora_alpha", 8))
    for pattern, value in (cfg.get("rank_pattern") or {}).items():
        if re.search(rf"(^|\.){pattern}$", module):
            r = int(value)
    for pattern, value in (cfg.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){pattern}$", module):
            alpha = float(value)
    return r, alpha / (math.sqrt(r) if cfg.get("use_rslora") else r)


def _adapter_tensors(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        if (adapter_dir / "adapter_model.bin").is_file():
            raise UnsafeInput(f"{adapter_dir} holds a pickled adapter (adapter_model.bin)", why="pickles can run code when loaded",
                              fix="save the adapter with safe_serialization=True")
        raise ConfigError(f"{adapter_dir} has no adapter_model.safetensors", fix="pass the folder PEFT's save_pretrained wrote")
    st = require("safetensors.numpy", extra="train", purpose="reading adapter weights")
    try:
        return dict(st.load_file(str(path)))
    except Exception as exc:
        raise DataError(f"{path.name} is not a readable safetensors file", why=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                        fix="restore the adapter from its fine-tune") from exc


def convert_lora(adapter_dir: Path, base: Path | HParams, out_path: Path, *, name: str | None = None) -> dict[str, Any]:
    """Write the PEFT adapter in ``adapter_dir`` as a GGUF LoRA for ``base`` (its HF folder, or its layout from a GGUF)."""
    gguf = require("gguf", extra="gguf", purpose="writing GGUF files")
    adapter_dir = Path(adapter_dir)
    cfg = read_adapter_config(adapter_dir)
    hp = base if isinstance(base, HParams) else read_hparams(read_config(Path(base)))
    pairs: dict[str, dict[str, np.ndarray]] = {}
    tensors = _adapter_tensors(adapter_dir)
    odd = sorted(k for k in tensors if _KEY.match(k) is None)
    if odd:
        special = next((k for k in odd if "lora_embedding" in k or "lora_magnitude" in k), None)
        raise ConfigError(
            f"adapter tensor {special or odd[0]} cannot go into a GGUF LoRA",
            why="a GGUF LoRA holds only lora_A/lora_B pairs of the attention and MLP projections; LoRA on embeddings, "
            "DoRA magnitudes and fully saved layers are not representable",
            fix="merge the adapter into the base model instead: slmops export gguf MODEL --adapter A --merge-adapter",
        )
    for key, value in tensors.items():
        m = _KEY.match(key)
        assert m is not None
        pairs.setdefault(m.group(1), {})[m.group(2)] = np.asarray(value, dtype=np.float32)
    if not pairs:
        raise DataError(f"{adapter_dir} holds no LoRA weights", fix="pass an adapter saved by PEFT")
    alpha = float(cfg.get("lora_alpha", 8))
    writer = gguf.GGUFWriter(path=None, arch=hp.gguf_arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(name or adapter_dir.name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for module in sorted(pairs):
        ab = pairs[module]
        if set(ab) != {"A", "B"}:
            raise DataError(f"adapter module {module} has only lora_{''.join(ab)}", fix="restore the adapter from its fine-tune")
        base = gguf_base_name(module, hp)
        if base is None or base in ("token_embd", "output"):
            raise ConfigError(f"LoRA on {module} cannot go into a GGUF LoRA", why=f"llama.cpp's {hp.gguf_arch} LoRA covers the attention and MLP projections",
                              fix="merge the adapter into the base model instead (--merge-adapter)")
        a, b = ab["A"], ab["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise DataError(f"adapter module {module} has mismatched shapes {a.shape} and {b.shape}", fix="restore the adapter from its fine-tune")
        _rank, scaling = _scaling(cfg, module)
        b = b * (scaling * a.shape[0] / alpha)  # llama.cpp applies alpha / rank; make that PEFT's scaling
        if hp.spec.permute_qk and base.endswith(".attn_q"):
            b = permute_rows(b, hp.num_heads)
        elif hp.spec.permute_qk and base.endswith(".attn_k"):
            b = permute_rows(b, hp.num_kv_heads)
        writer.add_tensor(f"{base}.weight.lora_a", np.ascontiguousarray(a, dtype=np.float32))
        writer.add_tensor(f"{base}.weight.lora_b", np.ascontiguousarray(b, dtype=np.float32))
    out_path = Path(out_path)
    with writing_gguf(writer, out_path):
        writer.write_tensors_to_file()
    return {"arch": hp.gguf_arch, "modules": len(pairs), "rank": int(cfg.get("r", 8)), "alpha": alpha,
            "target_modules": sorted({m.rsplit(".", 1)[-1] for m in pairs}), "file_bytes": out_path.stat().st_size}
