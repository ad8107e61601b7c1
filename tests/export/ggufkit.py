"""Helpers and sample data shared by the GGUF tests (imported as ``ggufkit``; fixtures live in conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ARCHES = ("llama", "qwen2", "phi3")
LORA_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
}
SAMPLE_TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "Hello, world! It's 2026; prices rose 12.5% (from $1,234 to $1,388).",
    "  leading spaces, trailing spaces  \n\nand\tTabs\r\nCRLF",
    "héllo wörld — naïve café, 中文字符, emoji 🙂🚀, العربية",
    "<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n4<|end|>",
    "<|im_start|>user\nhi<|im_end|>\n",
    "don't won't I'm you're they've we'll she'd CAN'T",
    "1234567890 123 4567 00012",
    "x" * 40,
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def make_lora(model_art: Any, arch: str, out: Path, *, seed: int = 0, **lora_kwargs: Any) -> Any:
    """A PEFT LoRA on ``model_art`` with random non-zero A and B; returns the PeftModel (saved to ``out``)."""
    import peft
    import torch

    from slmops.models.loading import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(model_art)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS[arch], lora_dropout=0.0, **lora_kwargs)
    pm = peft.get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    pm.eval()
    pm.save_pretrained(str(out))
    return pm


def register_adapter(store: Any, folder: Path, base: Any) -> Any:
    """Commit a PEFT folder as an ``adapter`` artifact whose ``model`` parent is ``base``."""
    import shutil

    from slmops.store.artifact import Parent

    with store.staging() as tmp:
        for f in folder.iterdir():
            if f.name.endswith((".json", ".safetensors")):
                shutil.copy2(f, tmp / f.name)
        return store.commit(tmp, kind="adapter", format="peft", parents=[Parent(digest=base.digest, role="model")])
