"""The llama.cpp runtime on f32 GGUF exports of the tiny models: protocol, streaming, stops, sampling, logits, errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from slmops.errors import ConfigError
from slmops.runtimes import GenerationParams, PromptTooLong, Runtime, open_runtime
from slmops.runtimes.llamacpp_rt import LlamaCppRuntime, default_threads


@pytest.fixture(scope="module")
def ggufs(tiny_models: dict[str, Any]) -> dict[str, Any]:
    from slmops.stage.runner import run_stage
    from slmops.store import Store

    art = tiny_models["llama"]
    with Store(art.path.parent.parent) as store:
        return {arch: run_stage("export.gguf", {"model": m}, {"qtype": "f32"}, store=store).artifact for arch, m in tiny_models.items()}


@pytest.fixture(scope="module")
def cpp(ggufs: dict[str, Any]) -> Iterator[LlamaCppRuntime]:
    rt = open_runtime(ggufs["llama"])
    yield rt
    rt.close()


def test_is_a_runtime(cpp: LlamaCppRuntime, torch_rt: Any) -> None:
    assert isinstance(cpp, Runtime) and cpp.name == "llamacpp"
    assert cpp.context_length == 512 and cpp.vocab_size == torch_rt.vocab_size
    assert cpp.eos_token_ids == torch_rt.eos_token_ids
    assert cpp.capabilities.adapters and cpp.capabilities.logits and cpp.capabilities.batching  # LlamaBatcher (runtime.batcher)
    assert cpp.capabilities.adapter_formats == ("peft", "gguf-lora") and cpp.adapters == ()
    assert cpp.info.format == "gguf" and cpp.info.load_s is not None and cpp.info.extra["qtype"] == "f32"
    assert cpp.metadata("general.architecture") == "llama" and cpp.metadata("no.such.key") is None
    assert default_threads(1 << 20) == 1


def test_stream_and_generate_agree(cpp: LlamaCppRuntime) -> None:
    params = GenerationParams(max_tokens=20, ignore_eos=True)
    events = list(cpp.stream("the quick brown fox", params))
    assert [e.index for e in events] == list(range(20))
    assert all(e.finish_reason is None for e in events[:-1]) and events[-1].finish_reason == "length"
    res = cpp.generate("the quick brown fox", params)
    assert "".join(e.text for e in events) == res.text and [e.token_id for e in events] == res.token_ids
    assert res.ttft_s is not None and res.prompt_tokens == len(cpp.tokenize("the quick brown fox"))


def test_stop_strings_and_sampling_match_torch(cpp: LlamaCppRuntime, torch_rt: Any) -> None:
    prompt = "a teacher answers questions and"
    greedy = torch_rt.generate(prompt, GenerationParams(max_tokens=16, ignore_eos=True))
    stop = greedy.text.strip()[2:6] or "and"
    p = GenerationParams(max_tokens=16, stop=[stop])
    a, b = cpp.generate(prompt, p), torch_rt.generate(prompt, p)
    assert a.text == b.text and a.finish_reason == b.finish_reason and stop not in a.text
    sampled = GenerationParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=3, ignore_eos=True, logprobs=True, top_logprobs=3)
    x, y = cpp.generate(prompt, sampled), torch_rt.generate(prompt, sampled)
    assert x.token_ids == y.token_ids  # same logits (to 1e-4) and the same seeded sampler
    assert np.allclose(x.logprobs, y.logprobs, atol=1e-3) and len(x.top_logprobs[0]) == 3
    assert cpp.generate(prompt, sampled).token_ids == x.token_ids


def test_chat_template_and_prompt_encoding(cpp: LlamaCppRuntime, torch_rt: Any) -> None:
    msgs = [{"role": "user", "content": "hi"}]
    text = cpp.apply_chat_template(msgs)
    assert text == torch_rt.apply_chat_template(msgs) and text.startswith("<s>")
    assert cpp.encode_prompt(text) == torch_rt.encode_prompt(text)  # one BOS, not two
    assert cpp.encode_prompt([5, 6]) == [5, 6]


@pytest.mark.parametrize("arch", ["qwen2", "phi3"])
def test_other_families_generate_like_torch(arch: str, ggufs: dict[str, Any], runtimes: dict[str, Any]) -> None:
    with open_runtime(ggufs[arch]) as rt:
        msgs = [{"role": "user", "content": "hello"}]
        prompt = rt.apply_chat_template(msgs)
        params = GenerationParams(max_tokens=12)
        assert rt.generate(prompt, params).token_ids == runtimes[arch].generate(prompt, params).token_ids


def test_errors(cpp: LlamaCppRuntime, ggufs: dict[str, Any], tmp_path: Any) -> None:
    with pytest.raises(PromptTooLong):
        cpp.generate([1] * 600)
    with pytest.raises(PromptTooLong):
        cpp.sequence_logits([1] * 600)
    with pytest.raises(ConfigError, match="empty"):
        cpp.generate([])
    with pytest.raises(ConfigError, match="outside the model's vocabulary"):
        cpp.next_token_logits([1, 10**6])
    with pytest.raises(ConfigError, match="kv_cache_type"):
        open_runtime(ggufs["llama"], kv_cache_type="q1")
    with pytest.raises(ConfigError, match="cannot run a 'gguf' artifact"):
        open_runtime(ggufs["llama"], runtime="torch")
    with pytest.raises(ConfigError, match="no GGUF model"):
        LlamaCppRuntime.from_path(tmp_path / "missing")
    rt = open_runtime(ggufs["llama"], n_ctx=64, n_threads=1, kv_cache_type="f32")
    assert rt.context_length == 64 and rt.info.extra["threads"] == 1
    rt.close()
    with pytest.raises(ConfigError, match="closed"):
        rt.tokenize("x")


def test_logits_shapes(cpp: LlamaCppRuntime, torch_rt: Any) -> None:
    ids = cpp.tokenize("one two three four five")
    seq = cpp.sequence_logits(ids)
    assert seq.shape == (len(ids), cpp.vocab_size) and seq.dtype == np.float32
    assert np.allclose(seq[-1], cpp.next_token_logits(ids), atol=1e-4)
    assert np.allclose(seq, torch_rt.sequence_logits(ids), atol=1e-3)


def test_engine_timings(cpp: LlamaCppRuntime) -> None:
    cpp.engine_timings(reset=True)
    cpp.generate("the quick brown fox", GenerationParams(max_tokens=5, ignore_eos=True))
    t = cpp.engine_timings()
    assert t["decode_tokens"] == 4 and t["prompt_tokens"] >= 1 and t["decode_ms"] > 0


def test_model_params_turn_the_amx_buffers_off_where_llama_cpp_has_them(monkeypatch: pytest.MonkeyPatch) -> None:
    # ggml's AMX matmul crashes the process on the first decode (llama.cpp #20824): on a build with AMX kernels
    # every model load goes without the extra weight buffers, unless the user turns them back on
    from slmops.runtimes import llamacpp_lib

    monkeypatch.delenv(llamacpp_lib.AMX_ENV, raising=False)
    monkeypatch.setattr(llamacpp_lib, "amx_kernels", lambda: True)
    mp = llamacpp_lib.model_params()
    assert mp.use_extra_bufts is False and mp.n_gpu_layers == 0
    monkeypatch.setenv(llamacpp_lib.AMX_ENV, "1")
    assert llamacpp_lib.model_params().use_extra_bufts is True
    monkeypatch.delenv(llamacpp_lib.AMX_ENV)
    monkeypatch.setattr(llamacpp_lib, "amx_kernels", lambda: False)
    assert llamacpp_lib.model_params().use_extra_bufts is True


def test_amx_kernels_agrees_with_llama_cpps_own_system_info() -> None:
    # amx_kernels() asks the libggml-cpu it finds next to the bindings; libllama reports the features of the
    # CPU backend it actually loaded: the two must agree, or model_params() would guard the wrong build
    from slmops.runtimes import llamacpp_lib

    info = llamacpp_lib.lib().llama_print_system_info().decode()
    assert "CPU :" in info, info
    assert llamacpp_lib.amx_kernels() is ("AMX_INT8 = 1" in info)
