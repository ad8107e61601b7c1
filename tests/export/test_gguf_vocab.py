"""SentencePiece vocabularies (Llama 2 / Mistral style ``tokenizer.model``) → GGUF ``llama`` tokenizer, checked against sentencepiece."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slmops.runtimes import open_runtime
from slmops.stage.runner import run_stage

TEXTS = ["the quick brown fox", "Hello, world!  two  spaces", "emoji 🙂 and ünïcödé", "1234 digits 56", "\nnew\nlines\n"]


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    import sentencepiece as spm
    import torch
    import transformers

    from slmops.testing.tiny import tiny_corpus

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tiny_corpus(400)), model_writer=buf, vocab_size=400, model_type="bpe", byte_fallback=True, character_coverage=1.0,
        bos_id=1, eos_id=2, unk_id=0, pad_id=-1, normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True, minloglevel=2,
    )  # the settings of Llama 2's tokenizer
    folder = tmp_path_factory.mktemp("spm") / "llama-spm"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(buf.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True}))
    cfg = transformers.LlamaConfig(vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(str(folder))
    return folder, (spm.SentencePieceProcessor(model_proto=buf.getvalue()), model)


def test_sentencepiece_vocab_tokenizes_like_sentencepiece(store: Any, spm_model: tuple[Path, Any]) -> None:
    import shutil

    import torch

    folder, (sp, model) = spm_model
    with store.staging() as tmp:
        for f in folder.iterdir():
            shutil.copy2(f, tmp / f.name)
        art = store.commit(tmp, kind="model", format="hf-safetensors")
    g = run_stage("export.gguf", {"model": art}, {"qtype": "f32"}, store=store).artifact
    assert g.manifest.meta["tokenizer_model"] == "llama" and g.manifest.meta["vocab_size"] == 400
    with open_runtime(g) as rt:
        for text in TEXTS:
            ids = rt.tokenize(text)
            assert ids == [1, *sp.encode(text)], text
            assert rt.detokenize(ids) == sp.decode(ids[1:]) == text
        assert 2 in rt.eos_token_ids
        ids = rt.tokenize(TEXTS[0])
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0].numpy()
        assert np.allclose(rt.sequence_logits(ids), ref, atol=1e-3)


def test_sentencepiece_gguf_comes_back_as_a_tokenizer_that_matches(store: Any, spm_model: tuple[Path, Any]) -> None:
    """GGUF → HF (``models.from_gguf``) rebuilds a SentencePiece vocabulary as byte-fallback BPE with the same ids."""
    import shutil

    import transformers

    from slmops.stage.inputs import as_model

    folder, (sp, _) = spm_model
    with store.staging() as tmp:
        for f in folder.iterdir():
            shutil.copy2(f, tmp / f.name)
        art = store.commit(tmp, kind="model", format="hf-safetensors")
    back = as_model(run_stage("export.gguf", {"model": art}, {"qtype": "f32"}, store=store).artifact, store)
    tok = transformers.AutoTokenizer.from_pretrained(str(back.path))
    for text in [*TEXTS, "a\u00a0b <0x41> x" * 3]:
        ids = tok.encode(text)
        assert ids == [1, *sp.encode(text)], text
        assert tok.decode(ids, skip_special_tokens=True) == sp.decode(ids[1:])


def _byte_level_model(folder: Path, pre_tokenizer: Any) -> Any:
    """A tiny Llama whose byte-level BPE tokenizer uses ``pre_tokenizer`` (GPT-2 or SmolLM style)."""
    import tokenizers as tk
    import torch
    import transformers

    from slmops.testing.tiny import tiny_corpus

    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"], initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
                                     show_progress=False)
    tok.train_from_iterator(tiny_corpus(400), trainer=trainer)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", clean_up_tokenization_spaces=False)
    folder.mkdir(parents=True)
    hf.save_pretrained(str(folder))
    cfg = transformers.LlamaConfig(vocab_size=len(hf), hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(folder))
    return transformers.AutoTokenizer.from_pretrained(str(folder))


@pytest.mark.parametrize("style", ["gpt-2", "smollm"])
def test_gpt2_and_smollm_pre_tokenizers(store: Any, tmp_path: Path, style: str) -> None:
    import shutil

    import tokenizers as tk

    byte_level = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    pre = byte_level if style == "gpt-2" else tk.pre_tokenizers.Sequence([tk.pre_tokenizers.Digits(individual_digits=True), byte_level])
    hf = _byte_level_model(tmp_path / style, pre)
    with store.staging() as tmp:
        for f in (tmp_path / style).iterdir():
            shutil.copy2(f, tmp / f.name)
        art = store.commit(tmp, kind="model", format="hf-safetensors")
    g = run_stage("export.gguf", {"model": art}, {"qtype": "f32"}, store=store).artifact
    assert g.manifest.meta["pre_tokenizer"] == style
    with open_runtime(g) as rt:
        for text in [*TEXTS, "Room 101, 2026-11-29: x=12345"]:
            assert rt.tokenize(text, add_special_tokens=False) == hf.encode(text, add_special_tokens=False), text
