"""Continuous batching on the torch runtime: concurrent sequences share forward passes and decode what they would alone."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from slmops.errors import ConfigError
from slmops.runtimes import GenerationParams
from slmops.runtimes.torch_batch import TorchBatcher

PROMPTS = ["the quick brown fox", "a teacher answers questions and", "hello", "small models run fast on one machine today"]


@pytest.fixture
def batcher(torch_rt: Any) -> Any:
    b = TorchBatcher(torch_rt, max_batch=4)
    yield b
    b.close()


def test_batched_greedy_equals_alone_even_when_sequences_join_and_leave(torch_rt: Any, batcher: TorchBatcher) -> None:
    lengths = [12, 40, 25, 33]
    alone = [torch_rt.generate(p, GenerationParams(max_tokens=n, ignore_eos=True)).token_ids for p, n in zip(PROMPTS, lengths, strict=True)]
    got: dict[int, list[int]] = {}
    start = threading.Barrier(len(PROMPTS))

    def run(i: int) -> None:
        start.wait()
        got[i] = [ev.token_id for ev in batcher.stream(PROMPTS[i], GenerationParams(max_tokens=lengths[i], ignore_eos=True))]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [got[i] for i in range(len(PROMPTS))] == alone
    assert batcher.rows_stepped > batcher.steps, "the sequences should have shared forward passes"
    assert batcher.running == 0


def test_closing_a_stream_early_leaves_the_batch(torch_rt: Any, batcher: TorchBatcher) -> None:
    it = batcher.stream("hello", GenerationParams(max_tokens=50, ignore_eos=True))
    next(it)
    next(it)
    it.close()
    assert batcher.running == 0
    again = [ev.token_id for ev in batcher.stream("hello", GenerationParams(max_tokens=5, ignore_eos=True))]
    assert again == torch_rt.generate("hello", GenerationParams(max_tokens=5, ignore_eos=True)).token_ids


def test_unknown_adapter_is_refused(batcher: TorchBatcher) -> None:
    with pytest.raises(ConfigError, match="no adapter named"):
        batcher.stream("hello", GenerationParams(max_tokens=2), adapter="nope")


def _random_adapter(model_dir: Any, out: Any, *, dora: bool, seed: int) -> Any:
    """A PEFT LoRA (or DoRA) adapter with random non-zero weights, saved as a folder."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=dora, init_lora_weights=False)
    peft.get_peft_model(model, cfg).save_pretrained(out)
    return out


def test_dora_adapter_rows_batch_with_other_adapters(tiny_models: dict[str, Any], tmp_path: Any) -> None:
    """PEFT cannot mix DoRA rows with others in one pass: the batcher steps them per adapter, same tokens as alone."""
    from slmops.runtimes import open_runtime

    rt = open_runtime(tiny_models["llama"])
    b = TorchBatcher(rt, max_batch=4)
    try:
        rt.load_adapter("lora", _random_adapter(tiny_models["llama"].path, tmp_path / "lora", dora=False, seed=1))
        rt.load_adapter("dora", _random_adapter(tiny_models["llama"].path, tmp_path / "dora", dora=True, seed=2))
        assert not rt.mixable(["dora", None]) and rt.mixable(["lora", None]) and rt.mixable(["dora", "dora"])
        jobs = [(PROMPTS[0], None), (PROMPTS[1], "lora"), (PROMPTS[2], "dora"), (PROMPTS[3], "dora")]
        params = GenerationParams(max_tokens=12, ignore_eos=True)
        alone = [[ev.token_id for ev in b.stream(p, params, adapter=a)] for p, a in jobs]
        assert alone[2] != [ev.token_id for ev in b.stream(PROMPTS[2], params)], "the DoRA adapter should change the output"
        # the runtime itself takes the same per-request adapter (the Runtime protocol's ``adapter=``), outside the batcher
        assert [rt.generate(p, params, adapter=a).token_ids for p, a in jobs] == alone
        ids = rt.encode_prompt(PROMPTS[1])
        assert not np.allclose(rt.sequence_logits(ids, adapter="lora"), rt.sequence_logits(ids))
        assert np.allclose(rt.next_token_logits(ids, adapter="lora"), rt.sequence_logits(ids, adapter="lora")[-1], atol=1e-4)
        got: dict[int, list[int]] = {}
        start = threading.Barrier(len(jobs))

        def run(i: int) -> None:
            start.wait()
            got[i] = [ev.token_id for ev in b.stream(jobs[i][0], params, adapter=jobs[i][1])]

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert [got.get(i) for i in range(len(jobs))] == alone
        assert b.rows_stepped > b.steps, "the sequences should have shared steps"
    finally:
        b.close()
        rt.close()
