"""HF → GGUF on real tiny Llama, Qwen2 and Phi-3 models, loaded and run by the real llama.cpp."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ggufkit import ARCHES, SAMPLE_TEXTS

from slmops.errors import DataError
from slmops.runtimes import GenerationParams, open_runtime
from slmops.runtimes.sampling import log_softmax
from slmops.stage.runner import run_stage

PROMPTS = ["the quick brown fox", "a teacher answers questions and", "héllo 中文 🙂"]


def kl(ref: np.ndarray, cand: np.ndarray) -> float:
    p, q = log_softmax(ref), log_softmax(cand)
    return float(np.mean(np.sum(np.exp(p) * (p - q), axis=-1)))


@pytest.fixture(scope="module")
def torch_rts(tiny: dict[str, Any]) -> Any:
    rts = {arch: open_runtime(m) for arch, m in tiny.items()}
    yield rts
    for rt in rts.values():
        rt.close()


@pytest.fixture(scope="module")
def gguf_rts(f32: dict[str, Any]) -> Any:
    rts = {arch: open_runtime(a) for arch, a in f32.items()}
    yield rts
    for rt in rts.values():
        rt.close()


@pytest.mark.parametrize("arch", ARCHES)
def test_f32_greedy_and_logits_match_torch(arch: str, torch_rts: dict[str, Any], gguf_rts: dict[str, Any]) -> None:
    t, g = torch_rts[arch], gguf_rts[arch]
    assert g.name == "llamacpp" and g.vocab_size == t.vocab_size
    for prompt in PROMPTS:
        ids = t.tokenize(prompt)
        params = GenerationParams(max_tokens=24)
        assert g.generate(ids, params).token_ids == t.generate(ids, params).token_ids
    seq = t.tokenize("the quick brown fox jumps over the lazy dog, and then the story goes on for a while")
    assert kl(t.sequence_logits(seq), g.sequence_logits(seq)) < 1e-5
    assert np.argmax(g.next_token_logits(seq)) == np.argmax(t.next_token_logits(seq))


@pytest.mark.parametrize("arch", ARCHES)
def test_tokenization_matches_hf(arch: str, torch_rts: dict[str, Any], gguf_rts: dict[str, Any]) -> None:
    t, g = torch_rts[arch], gguf_rts[arch]
    for text in SAMPLE_TEXTS:
        for special in (True, False):
            assert g.tokenize(text, add_special_tokens=special) == t.tokenize(text, add_special_tokens=special), (text, special)
        ids = t.tokenize(text, add_special_tokens=False)
        assert g.detokenize(ids) == t.detokenize(ids)
        assert g.detokenize(ids, skip_special_tokens=False) == t.detokenize(ids, skip_special_tokens=False)


@pytest.mark.parametrize("arch", ARCHES)
def test_metadata_specials_and_chat_template(arch: str, f32: dict[str, Any], torch_rts: dict[str, Any], gguf_rts: dict[str, Any]) -> None:
    import gguf

    art = f32[arch]
    side = json.loads((art.path / "gguf.json").read_text())
    assert side["model"] == "model.gguf" and side["qtype"] == "f32" and side["adapters"] == []
    r = gguf.GGUFReader(str(art.path / "model.gguf"))
    field = lambda k: r.fields[k].contents()
    assert field("general.architecture") == arch
    assert field("tokenizer.ggml.model") == "gpt2"
    assert field("tokenizer.ggml.pre") == ("qwen2" if arch == "qwen2" else "smaug-bpe")
    assert field("tokenizer.ggml.add_bos_token") is (arch != "qwen2")
    assert "phi3" not in field("general.name").lower()  # llama.cpp would apply Phi-3's token rules by name
    assert "{% generation" not in field("tokenizer.chat_template")
    t, g = torch_rts[arch], gguf_rts[arch]
    assert g.eos_token_ids == t.eos_token_ids
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert g.apply_chat_template(msgs) == t.apply_chat_template(msgs)
    assert art.manifest.metrics["parameters"] == t.model.num_parameters()


def test_quantized_k_quants_load_and_stay_close(gstore: Any, tiny256: Any) -> None:
    f16 = run_stage("export.gguf", {"model": tiny256}, {"qtype": "f16"}, store=gstore).artifact
    q8 = run_stage("export.gguf", {"model": tiny256}, {"qtype": "q8_0"}, store=gstore).artifact
    q4 = run_stage("export.gguf", {"model": tiny256}, {"qtype": "q4_k_m"}, store=gstore).artifact
    assert set(q8.manifest.meta["tensor_types"]) == {"F32", "Q8_0"}
    assert {"Q4_K", "Q6_K"} <= set(q4.manifest.meta["tensor_types"])  # real K-quants at this width
    assert q4.manifest.metrics["size_bytes"] < 0.4 * f16.manifest.metrics["size_bytes"]
    with open_runtime(tiny256) as t, open_runtime(q8) as g8, open_runtime(q4) as g4:
        seq = t.tokenize("the quick brown fox jumps over the lazy dog, and then the story goes on for a while")
        ref = t.sequence_logits(seq)
        k8, k4 = kl(ref, g8.sequence_logits(seq)), kl(ref, g4.sequence_logits(seq))
        assert k8 < 1e-3 and k8 < k4 < 0.1
        assert g4.generate("once upon a time", GenerationParams(max_tokens=8)).completion_tokens >= 1


def test_narrow_tensors_fall_back_to_32_wide_types(gstore: Any, tiny: dict[str, Any], tiny256: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A K-quant of rows that are not multiples of 256 is mostly 32-wide types; the manifest, the log and the bits say so."""
    from slmops.export.gguf_quantize import fallback_line

    with caplog.at_level(logging.WARNING, logger="slmops.export.gguf_quantize"):
        q4 = run_stage("export.gguf", {"model": tiny["llama"]}, {"qtype": "q4_k_m"}, store=gstore, force=True).artifact
    meta = q4.manifest.meta
    types = meta["tensor_types"]
    assert "Q4_K" not in types and "Q5_0" in types  # hidden 64 is not a multiple of 256: llama.cpp's fallback
    fb = meta["fallbacks"]
    weights = sum(n for t, n in types.items() if t != "F32")
    assert fb["tensors"] == fb["matrices"] == weights and fb["row_lengths"] == [64, 128]  # hidden and MLP widths
    assert fb["types"]["Q4_K->Q5_0"] == types["Q5_0"] and sum(fb["types"].values()) == weights
    assert meta["type_bits"]["Q5_0"] == 5.5 and meta["type_bits"]["Q8_0"] == 8.5  # 32 weights + an fp16 scale per block
    assert 5.5 < meta["bits_per_weight"] < 8.5
    assert fallback_line(meta) in caplog.text and "not a multiple of 256" in caplog.text
    wide = run_stage("export.gguf", {"model": tiny256}, {"qtype": "q4_k_m"}, store=gstore).artifact.manifest.meta
    assert "fallbacks" not in wide and wide["type_bits"]["Q4_K"] == 4.5 and wide["bits_per_weight"] < meta["bits_per_weight"]
    with open_runtime(q4) as g:
        assert g.generate("hello", GenerationParams(max_tokens=4)).completion_tokens >= 1


def test_importance_matrix_from_data(gstore: Any, tiny256: Any, dataset: Any) -> None:
    r = run_stage("export.gguf", {"model": tiny256, "data": dataset}, {"qtype": "q4_k_m", "imatrix_texts": 8}, store=gstore)
    meta = r.artifact.manifest.meta
    assert meta["imatrix"]["texts"] == 8 and meta["imatrix"]["tokens"] > 8
    assert meta["imatrix_tensors"] == 14  # 7 projections × 2 layers (tied head: no output.weight)
    assert {p.role for p in r.artifact.manifest.parents} == {"model", "data"}
    plain = run_stage("export.gguf", {"model": tiny256}, {"qtype": "q4_k_m"}, store=gstore).artifact
    assert plain.digest != r.artifact.digest  # the imatrix changed the quantized weights


def test_rerun_is_a_cache_hit(gstore: Any, tiny: dict[str, Any], f32: dict[str, Any]) -> None:
    r = run_stage("export.gguf", {"model": tiny["llama"]}, {"qtype": "f32"}, store=gstore)
    assert r.cached and r.digest == f32["llama"].digest
    assert [p.role for p in r.artifact.manifest.parents] == ["model"]


def _commit_folder(store: Any, folder: Path) -> Any:
    with store.staging() as tmp:
        for f in folder.iterdir():
            shutil.copy2(f, tmp / f.name)
        return store.commit(tmp, kind="model", format="hf-safetensors")


def test_embedding_larger_than_tokenizer_is_padded(store: Any, hf_copy: Any) -> None:
    from slmops.models.loading import load_model_and_tokenizer

    folder = hf_copy("qwen2")
    model, tok = load_model_and_tokenizer(folder)
    model.resize_token_embeddings(len(tok) + 13)  # as real Qwen2 checkpoints: the embedding is rounded up
    model.save_pretrained(str(folder))
    art = run_stage("export.gguf", {"model": _commit_folder(store, folder)}, {"qtype": "f32"}, store=store).artifact
    with open_runtime(art) as g:
        assert g.vocab_size == len(tok) + 13
        assert g.tokenize("hello world") == tok.encode("hello world")


def _add_token_beyond_embedding(folder: Path, content: str = "<extra_unk>") -> None:
    tj = json.loads((folder / "tokenizer.json").read_text())
    n = max(tj["model"]["vocab"].values()) + 1
    tj["added_tokens"].append({"id": n, "content": content, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True})
    (folder / "tokenizer.json").write_text(json.dumps(tj))


def test_tokenizer_larger_than_embedding_is_refused_then_dropped_on_request(store: Any, hf_copy: Any) -> None:
    folder = hf_copy("qwen2")
    _add_token_beyond_embedding(folder)
    model = _commit_folder(store, folder)
    with pytest.raises(DataError, match="tokenizer has .* tokens but the model's embedding has only"):
        run_stage("export.gguf", {"model": model}, {"qtype": "f32"}, store=store)
    assert store.artifacts_list(kind="gguf", named_only=False) == []
    art = run_stage("export.gguf", {"model": model}, {"qtype": "f32", "drop_extra_tokens": True}, store=store).artifact
    assert art.manifest.meta["dropped_tokens"] == ["<extra_unk>"]
    with open_runtime(art) as g:
        assert g.vocab_size == model.manifest.meta.get("vocab_size", g.vocab_size)


def test_special_token_beyond_embedding_cannot_be_dropped(store: Any, hf_copy: Any) -> None:
    folder = hf_copy("qwen2")
    _add_token_beyond_embedding(folder, "<|im_end|>x")
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["eos_token"] = "<|im_end|>x"
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError, match="cannot be dropped"):
        run_stage("export.gguf", {"model": _commit_folder(store, folder)}, {"qtype": "f32", "drop_extra_tokens": True}, store=store)


def test_mistral_exports_as_llama(store: Any, hf_copy: Any) -> None:
    import torch
    import transformers

    folder = hf_copy("llama")
    cfg = json.loads((folder / "config.json").read_text())
    mcfg = transformers.MistralConfig(vocab_size=cfg["vocab_size"], hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=512, sliding_window=4096, tie_word_embeddings=False,
                                      bos_token_id=cfg["bos_token_id"], eos_token_id=cfg["eos_token_id"])
    torch.manual_seed(0)
    model = transformers.MistralForCausalLM(mcfg).eval()
    (folder / "model.safetensors").unlink()
    model.save_pretrained(str(folder))
    art = run_stage("export.gguf", {"model": _commit_folder(store, folder)}, {"qtype": "f32"}, store=store).artifact
    assert art.manifest.meta["arch"] == "llama" and art.manifest.meta["hf_architecture"] == "MistralForCausalLM"
    with open_runtime(art) as g:
        ids = g.tokenize("the quick brown fox jumps over the lazy dog")
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0].numpy()
        assert kl(ref, g.sequence_logits(ids)) < 1e-5
