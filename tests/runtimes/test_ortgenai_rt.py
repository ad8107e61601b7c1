"""The ort-genai runtime against the torch runtime on tiny fp32 exports of Llama, Qwen2 and Phi-3.

Same weights, so the same logits (to float rounding), the same greedy and seeded-sampled tokens, the
same token ids for text (BOS prepended where the source tokenizer adds one, NFC applied) and the
same text back; plus the engine-greedy fast path, EOS handling, adapters refused on a plain export,
and the protocol's error cases.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ARCHES = ("llama", "qwen2", "phi3")
TEXTS = [
    "Once upon a time, a small fox lived in the forest.",
    "héllo wörld — naïve café, 中文字符, emoji 🙂, e\u0301 (combining)",
    "  spaces  and\ttabs\n\nnewlines 1234567",
]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about foxes."}]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Any, Any]]]:
    """arch -> (torch runtime on the source, ort-genai runtime on its fp32 export)."""
    from slmops.runtimes import open_runtime
    from slmops.store.registry import Store
    from slmops.testing.onnx import tiny_onnx
    from slmops.testing.tiny import tiny_model

    store = Store(tmp_path_factory.mktemp("ortgenai_store"))
    out = {}
    for arch in ARCHES:
        model = tiny_model(arch, store=store)
        onnx = tiny_onnx(arch, store=store, parity_texts=0)
        out[arch] = (open_runtime(model), open_runtime(onnx))
    yield out
    for t, o in out.values():
        t.close()
        o.close()
    store.close()


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    from slmops.runtimes.sampling import log_softmax

    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return float(np.max(np.sum(np.exp(lp) * (lp - lq), axis=-1)))


@pytest.mark.parametrize("arch", ARCHES)
def test_logits_and_greedy_match_torch(pairs: dict[str, Any], arch: str) -> None:
    from slmops.runtimes import GenerationParams

    t, o = pairs[arch]
    assert o.name == "ort-genai" and o.vocab_size == t.vocab_size and o.context_length == t.context_length
    assert o.eos_token_ids == t.eos_token_ids
    ids = t.encode_prompt(TEXTS[0])
    assert np.abs(o.sequence_logits(ids) - t.sequence_logits(ids)).max() < 1e-4
    assert _kl(t.next_token_logits(ids), o.next_token_logits(ids)) < 1e-8
    prompt = t.apply_chat_template(CHAT)
    assert o.apply_chat_template(CHAT) == prompt
    params = GenerationParams(max_tokens=24)
    a, b = t.generate(prompt, params), o.generate(prompt, params)
    assert b.token_ids == a.token_ids and b.text == a.text and b.prompt_tokens == a.prompt_tokens
    sampled = GenerationParams(max_tokens=12, temperature=0.9, top_p=0.95, seed=7, logprobs=True, top_logprobs=2)
    a, b = t.generate(TEXTS[0], sampled), o.generate(TEXTS[0], sampled)
    assert b.token_ids == a.token_ids
    assert np.allclose(b.logprobs, a.logprobs, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHES)
def test_tokenization_bos_and_text_match_torch(pairs: dict[str, Any], arch: str) -> None:
    t, o = pairs[arch]
    adds_bos = arch != "qwen2"
    assert o.folder.add_bos is adds_bos
    for text in TEXTS:
        ids = t.tokenize(text)
        assert o.tokenize(text) == ids
        assert (ids[0] == t.tokenizer.bos_token_id) is adds_bos
        assert o.tokenize(text, add_special_tokens=False) == t.tokenize(text, add_special_tokens=False)
        assert o.detokenize(ids) == t.detokenize(ids)
    rendered = o.apply_chat_template(CHAT)
    assert o.encode_prompt(rendered) == t.encode_prompt(rendered)  # the template's own BOS is not doubled
    ids = t.tokenize(rendered, add_special_tokens=False)
    assert o.detokenize(ids, skip_special_tokens=False) == t.detokenize(ids, skip_special_tokens=False)


def test_bos_from_tokenizer_json_when_config_is_silent(pairs: dict[str, Any], tmp_path: Path) -> None:
    """A folder straight from the builder (no add_bos_token): the post-processor decides."""
    from slmops.runtimes.ortgenai_files import read_folder

    src = pairs["llama"][1].folder.path
    dst = tmp_path / "raw"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("manifest.json", "*.onnx*"))
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    cfg.pop("add_bos_token")
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert read_folder(dst).add_bos is True


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_engine_greedy_path_equals_logits_path(pairs: dict[str, Any], arch: str) -> None:
    from slmops.runtimes import GenerationParams

    _, o = pairs[arch]
    params = GenerationParams(max_tokens=20, stop=["zz"])
    fast = o.generate(TEXTS[2], params)
    o.engine_greedy = False
    try:
        slow = o.generate(TEXTS[2], params)
    finally:
        o.engine_greedy = True
    assert fast.token_ids == slow.token_ids and fast.text == slow.text


def test_engine_greedy_continues_past_eos(pairs: dict[str, Any], tmp_path: Path) -> None:
    """With ignore_eos, an EOS chosen by the engine (which then holds it back) is appended by the stepper and decoding goes on."""
    from slmops.runtimes import GenerationParams
    from slmops.runtimes.ortgenai_rt import OrtGenAIRuntime

    t, o = pairs["llama"]
    prompt = t.encode_prompt(TEXTS[0])
    first = o.generate(prompt, GenerationParams(max_tokens=1)).token_ids[0]
    dst = tmp_path / "eos"
    shutil.copytree(o.folder.path, dst, ignore=shutil.ignore_patterns("manifest.json"))
    cfg = json.loads((dst / "genai_config.json").read_text())
    cfg["model"]["eos_token_id"] = [first]
    (dst / "genai_config.json").write_text(json.dumps(cfg))
    with OrtGenAIRuntime.from_path(dst) as rt:
        stopped = rt.generate(prompt, GenerationParams(max_tokens=8))
        assert stopped.token_ids == [first] and stopped.finish_reason == "stop"
        fast = rt.generate(prompt, GenerationParams(max_tokens=8, ignore_eos=True))
        rt.engine_greedy = False
        slow = rt.generate(prompt, GenerationParams(max_tokens=8, ignore_eos=True))
    reference = t.generate(prompt, GenerationParams(max_tokens=8, ignore_eos=True))
    assert fast.token_ids == slow.token_ids == reference.token_ids
    assert fast.finish_reason == "length"


def test_stream_stops_and_finish_reason(pairs: dict[str, Any]) -> None:
    from slmops.runtimes import GenerationParams

    t, o = pairs["phi3"]
    full = o.generate(TEXTS[0], GenerationParams(max_tokens=16))
    assert full.finish_reason == "length" and len(full.token_ids) == 16
    events = list(o.stream(TEXTS[0], GenerationParams(max_tokens=16)))
    assert [e.token_id for e in events] == full.token_ids and events[-1].finish_reason == "length"
    stop_id = full.token_ids[3]
    cut = o.generate(TEXTS[0], GenerationParams(max_tokens=16, stop_token_ids=[stop_id]))
    assert cut.finish_reason == "stop" and cut.token_ids[-1] == stop_id
    assert cut.token_ids == t.generate(TEXTS[0], GenerationParams(max_tokens=16, stop_token_ids=[stop_id])).token_ids


def test_open_runtime_and_errors(pairs: dict[str, Any]) -> None:
    from slmops.errors import ConfigError
    from slmops.runtimes import GenerationParams, PromptTooLong, open_runtime

    _, o = pairs["qwen2"]
    assert not o.capabilities.adapters and o.capabilities.logits  # a plain export has no LoRA inputs
    with pytest.raises(ConfigError, match="without LoRA inputs"):
        o.load_adapter("x", o.folder.path)
    with pytest.raises(ConfigError, match="no adapter named"):
        o.generate("hi", GenerationParams(max_tokens=2), adapter="nope")
    with pytest.raises(ConfigError, match="empty"):
        o.generate([], GenerationParams(max_tokens=2))
    with pytest.raises(ConfigError, match="outside the model's vocabulary"):
        o.sequence_logits([o.vocab_size + 5])
    with pytest.raises(PromptTooLong):
        o.generate([5] * o.context_length, GenerationParams(max_tokens=2))
    with pytest.raises(ConfigError, match="torch runtime cannot run"):
        open_runtime(o.folder.path, runtime="torch")
    rt = open_runtime(o.folder.path, threads=1)
    assert rt.name == "ort-genai" and rt.info.extra["threads"] == 1
    assert rt.generate("hi", GenerationParams(max_tokens=3)).token_ids == o.generate("hi", GenerationParams(max_tokens=3)).token_ids
    rt.close()
    with pytest.raises(ConfigError, match="closed"):
        rt.tokenize("x")
