"""Continuous batching on the torch runtime: concurrent sequences share forward passes and decode what they would alone."""

from __future__ import annotations

import threading
from typing import Any

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
    with pytest.raises(ConfigError, match="not loaded"):
        batcher.stream("hello", GenerationParams(max_tokens=2), adapter="nope")
