"""Tiny ONNX Runtime GenAI exports and LoRA adapters for tests and demos, through the normal stage path.

``tiny_onnx("qwen2", store=s, precision="int4")`` makes the tiny model (``models.init``) and runs
``export.onnx`` on it through the cached runner, so a second call is a cache hit. ``tiny_lora``
makes a PEFT LoRA with random non-zero weights on a model artifact and registers it as an
``adapter`` artifact whose ``model`` parent is that model (what ``finetune.lora`` would leave).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from slmops.store.artifact import Artifact, Parent
from slmops.store.registry import Store

#: LoRA target modules per architecture (Phi-3 fuses q/k/v and gate/up).
LORA_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "v_proj", "o_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "up_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
}


def tiny_onnx(arch: str = "llama", *, store: Store, precision: str = "fp32", model: Artifact | None = None, **cfg: Any) -> Artifact:
    """``export.onnx`` of the tiny ``arch`` model (or of ``model``) at ``precision``; ``cfg`` are further config fields."""
    from slmops.stage.runner import run_stage
    from slmops.testing.tiny import tiny_model

    src = model if model is not None else tiny_model(arch, store=store)
    return run_stage("export.onnx", {"model": src}, {"precision": precision, **cfg}, store=store).artifact


def tiny_lora(model: Artifact, *, store: Store, arch: str | None = None, seed: int = 0, rank: int = 4, **lora_kwargs: Any) -> Artifact:
    """A PEFT LoRA adapter artifact on ``model`` with random non-zero A and B matrices."""
    import peft
    import torch

    from slmops.models.loading import load_model_and_tokenizer

    arch = arch or str(model.manifest.meta.get("arch") or model.manifest.meta.get("model_type"))
    base, _ = load_model_and_tokenizer(model)
    cfg = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=LORA_TARGETS[arch], lora_dropout=0.0, **lora_kwargs)
    pm = peft.get_peft_model(base, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    with tempfile.TemporaryDirectory() as tmp:
        pm.save_pretrained(tmp)
        with store.staging() as staged:
            for f in Path(tmp).iterdir():
                if f.name.endswith((".json", ".safetensors")):
                    shutil.copy2(f, staged / f.name)
            return store.commit(staged, kind="adapter", format="peft", parents=[Parent(digest=model.digest, role="model")],
                                meta={"source": "slmops.testing.onnx.tiny_lora", "arch": arch})
