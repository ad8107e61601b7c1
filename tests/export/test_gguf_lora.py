"""PEFT LoRA adapters → GGUF LoRA applied by llama.cpp at run time (and merged exports), against PEFT's own logits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ggufkit import make_lora, register_adapter

from slmops.errors import ConfigError
from slmops.runtimes import open_runtime
from slmops.runtimes.sampling import log_softmax
from slmops.stage.runner import run_stage

TEXT = "the quick brown fox jumps over the lazy dog and keeps running"


def kl(ref: np.ndarray, cand: np.ndarray) -> float:
    p, q = log_softmax(ref), log_softmax(cand)
    return float(np.mean(np.sum(np.exp(p) * (p - q), axis=-1)))


def peft_logits(pm: Any, ids: list[int], *, adapter: bool = True) -> tuple[np.ndarray, np.ndarray]:
    import torch

    with torch.no_grad():
        on = pm(torch.tensor([ids])).logits[0].numpy()
        with pm.disable_adapter():
            off = pm(torch.tensor([ids])).logits[0].numpy()
    return on, off


def test_adapter_becomes_a_runtime_lora(gstore: Any, tiny: dict[str, Any], lora: Any) -> None:
    pm, adapter = lora
    art = run_stage("export.gguf", {"model": tiny["llama"], "adapter": adapter}, {"qtype": "f32"}, store=gstore).artifact
    side = json.loads((art.path / "gguf.json").read_text())
    assert side["adapters"] == [{"file": "adapter.gguf", "scale": 1.0, "name": f"adapter-{adapter.short}"}]
    assert art.manifest.meta["adapter"]["modules"] == 14
    assert {p.role for p in art.manifest.parents} == {"model", "adapter"}
    with open_runtime(art) as rt:
        ids = rt.tokenize(TEXT)
        on, off = peft_logits(pm, ids)
        got = rt.sequence_logits(ids)
        assert kl(on, got) < 1e-5 < kl(on, off)  # the adapter matters, and llama.cpp applies it like PEFT
        rt.set_adapter_scales({f"adapter-{adapter.short}": 0.0})
        assert kl(off, rt.sequence_logits(ids)) < 1e-5
        rt.set_adapter_scales({f"adapter-{adapter.short}": 1.0})
        assert kl(on, rt.sequence_logits(ids)) < 1e-5
        with pytest.raises(ConfigError, match="no adapter named"):
            rt.set_adapter_scales({"nope": 1.0})
    with open_runtime(art, use_adapters=False) as rt:
        assert rt.adapters == () and rt.adapter_scales == {} and kl(off, rt.sequence_logits(ids)) < 1e-5


def test_merged_adapter_export(gstore: Any, tiny: dict[str, Any], lora: Any) -> None:
    pm, adapter = lora
    art = run_stage("export.gguf", {"model": tiny["llama"], "adapter": adapter}, {"qtype": "f32", "merge_adapter": True}, store=gstore).artifact
    assert not (art.path / "adapter.gguf").exists() and art.manifest.meta["merged_adapter"] == adapter.digest
    with open_runtime(art) as rt:
        ids = rt.tokenize(TEXT)
        assert kl(peft_logits(pm, ids)[0], rt.sequence_logits(ids)) < 1e-5


@pytest.mark.parametrize("arch", ["qwen2", "phi3"])
def test_lora_on_other_families(arch: str, gstore: Any, tiny: dict[str, Any], f32: dict[str, Any], tmp_path: Path) -> None:
    pm = make_lora(tiny[arch], arch, tmp_path / "a", seed=1, use_rslora=True)
    adapter = register_adapter(gstore, tmp_path / "a", tiny[arch])
    lo = run_stage("export.gguf_lora", {"adapter": adapter, "model": tiny[arch]}, {}, store=gstore).artifact
    assert lo.kind == "adapter" and lo.manifest.format == "gguf-lora"
    with open_runtime(f32[arch], adapters=[lo.path / "adapter.gguf"]) as rt:
        ids = rt.tokenize(TEXT)
        on, off = peft_logits(pm, ids)
        assert kl(on, rt.sequence_logits(ids)) < 1e-5 < kl(on, off)


def test_adapter_from_another_base_is_refused(gstore: Any, tiny: dict[str, Any], lora: Any) -> None:
    with pytest.raises(ConfigError, match="was trained on"):
        run_stage("export.gguf", {"model": tiny["qwen2"], "adapter": lora[1]}, {"qtype": "f32"}, store=gstore)


def test_unrepresentable_adapters_are_refused(gstore: Any, tiny: dict[str, Any], tmp_path: Path) -> None:
    from slmops.models.gguf_lora import convert_lora

    make_lora(tiny["llama"], "llama", tmp_path / "dora", use_dora=True)
    with pytest.raises(ConfigError, match="DoRA"):
        convert_lora(tmp_path / "dora", tiny["llama"].path, tmp_path / "x.gguf")
    import peft

    from slmops.models.loading import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(tiny["llama"])
    pm = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["embed_tokens", "q_proj"]))
    pm.save_pretrained(str(tmp_path / "emb"))
    with pytest.raises(ConfigError, match="embeddings"):
        convert_lora(tmp_path / "emb", tiny["llama"].path, tmp_path / "y.gguf")
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "y.gguf").exists()


def test_hot_adapters_per_request(f32: dict[str, Any], lora: Any, gstore: Any, tiny: dict[str, Any]) -> None:
    """The server's way: load adapters by name (a PEFT folder converted on the fly, or a GGUF LoRA) and name one per request."""
    from slmops.runtimes import GenerationParams

    pm, adapter = lora
    gguf_lora = run_stage("export.gguf_lora", {"adapter": adapter, "model": tiny["llama"]}, {}, store=gstore).artifact
    with open_runtime(f32["llama"]) as rt:
        ids = rt.tokenize(TEXT)
        on, off = peft_logits(pm, ids)
        rt.load_adapter("peft", adapter.path)  # PEFT folder: converted against the GGUF's own layout
        rt.load_adapter("gguf", gguf_lora.path)
        assert rt.adapters == ("peft", "gguf") and rt.adapter_scales == {"peft": 1.0, "gguf": 1.0}
        assert kl(off, rt.sequence_logits(ids)) < 1e-5  # loaded adapters stay off until a request names one
        p = GenerationParams(max_tokens=6, logprobs=True)
        base = rt.generate(ids, p)
        a, b = rt.generate(ids, p, adapter="peft"), rt.generate(ids, p, adapter="gguf")
        assert a.token_ids == b.token_ids and np.allclose(a.logprobs, b.logprobs, atol=1e-4)
        assert a.logprobs != base.logprobs
        assert a.logprobs[0] == pytest.approx(float(log_softmax(on[-1])[a.token_ids[0]]), abs=1e-3)  # PEFT's distribution
        assert rt.generate(ids, p).logprobs == base.logprobs  # the request's adapter is not left on
        with pytest.raises(ConfigError, match="no adapter named 'nope'"):
            rt.generate(ids, p, adapter="nope")
        assert rt.unload_adapter("peft") and not rt.unload_adapter("peft") and rt.adapter_scales == {"gguf": 1.0}
