"""Continuous batching on llama.cpp (LlamaBatcher) on the tiny Llama's f32 GGUF: the tokens of one sequence alone,
chunked prefill beside running decodes, prefix reuse, cancellation, and refusals."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from slmops.runtimes import GenerationParams, PromptTooLong, open_runtime
from slmops.runtimes.llamacpp_batch import LlamaBatcher
from slmops.runtimes.llamacpp_rt import LlamaCppRuntime

PROMPTS = ["the quick brown fox", "a teacher answers questions and", "once upon a time there was", "hello"]


@pytest.fixture(scope="module")
def cpp(tiny_models: dict[str, Any]) -> Iterator[LlamaCppRuntime]:
    from slmops.stage.runner import run_stage
    from slmops.store import Store

    art = tiny_models["llama"]
    with Store(art.path.parent.parent) as store:
        gguf = run_stage("export.gguf", {"model": art}, {"qtype": "f32"}, store=store).artifact
    rt = open_runtime(gguf)
    yield rt
    rt.close()


@pytest.fixture
def batcher(cpp: LlamaCppRuntime) -> Iterator[LlamaBatcher]:
    b = LlamaBatcher(cpp, slots=4, prefill_chunk=16)
    yield b
    b.close()


def test_a_batch_context_runs_on_a_persistent_threadpool(batcher: LlamaBatcher) -> None:
    # as llama-server: without one, every llama_decode makes (and a build without OpenMP starts) its worker threads anew
    assert batcher._pool is not None
    events = list(batcher.stream(PROMPTS[0], GenerationParams(max_tokens=4, ignore_eos=True)))
    assert len(events) == 4


def wait_until(cond: Any, timeout: float = 2.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())


def test_batched_sequences_give_the_tokens_of_one_sequence_alone(cpp: LlamaCppRuntime, batcher: LlamaBatcher) -> None:
    long_prompt = " ".join(["the teacher answers every question"] * 12)  # longer than prefill_chunk: prefilled in chunks
    cases = [
        (PROMPTS[0], GenerationParams(max_tokens=24, ignore_eos=True)),
        (PROMPTS[1], GenerationParams(max_tokens=24, temperature=1.0, top_p=0.9, seed=3, ignore_eos=True, logprobs=True, top_logprobs=2)),
        (PROMPTS[2], GenerationParams(max_tokens=12, ignore_eos=True)),
        (long_prompt, GenerationParams(max_tokens=20, ignore_eos=True)),
    ]
    want = [cpp.generate(p, params) for p, params in cases]
    with batcher._cond:  # the batcher admits nothing while this is held: all four join the same step
        streams = [batcher.stream(p, params) for p, params in cases]
    got = [list(s) for s in streams]
    for w, events in zip(want, got, strict=True):
        assert [e.token_id for e in events] == w.token_ids
        assert "".join(e.text for e in events) == w.text
        assert events[-1].finish_reason == w.finish_reason == "length"
    assert [e.logprob for e in got[1]] == pytest.approx(want[1].logprobs, abs=1e-3)
    assert batcher.stats.max_batch == 4, "the four sequences decoded in the same steps"
    assert len(cpp.encode_prompt(long_prompt)) > 16
    assert batcher.running == 0


def test_stop_strings_and_eos_end_one_sequence_not_the_batch(cpp: LlamaCppRuntime, batcher: LlamaBatcher) -> None:
    free = cpp.generate(PROMPTS[1], GenerationParams(max_tokens=16, ignore_eos=True))
    stop = free.text.strip()[2:5] or "a"
    p_stop = GenerationParams(max_tokens=16, stop=[stop])
    want_stop = cpp.generate(PROMPTS[1], p_stop)
    long = GenerationParams(max_tokens=40, ignore_eos=True)
    a, b = batcher.stream(PROMPTS[1], p_stop), batcher.stream(PROMPTS[0], long)
    ea, eb = list(a), list(b)
    assert "".join(e.text for e in ea) == want_stop.text and stop not in want_stop.text
    assert ea[-1].finish_reason == "stop" and len(eb) == 40


def test_a_repeated_prefix_is_taken_from_the_cache(cpp: LlamaCppRuntime, batcher: LlamaBatcher) -> None:
    system = " ".join(["you are a careful assistant who answers in short sentences"] * 4)
    first, second = system + " first question", system + " another one"
    params = GenerationParams(max_tokens=10, ignore_eos=True)
    list(batcher.stream(first, params))
    assert batcher.stats.prefix_hits == 0
    events = list(batcher.stream(second, params))
    common = 0
    a, b = cpp.encode_prompt(first), cpp.encode_prompt(second)
    while a[common] == b[common]:
        common += 1
    assert batcher.stats.prefix_hits == 1 and batcher.stats.prefix_hit_tokens == common > 20
    assert [e.token_id for e in events] == cpp.generate(second, params).token_ids, "reused cells give the same answer"
    # the whole prompt again: all but its last token come from the cache
    list(batcher.stream(second, params))
    assert batcher.stats.prefix_hit_tokens == common + len(b) - 1


def test_a_request_in_a_slot_freed_out_of_order_keeps_each_step_one_graph(cpp: LlamaCppRuntime, batcher: LlamaBatcher) -> None:
    """Slots 0, 2, 3 run on; the newcomer takes slot 1. Fed in arrival order (0, 2, 3, 1) llama.cpp would split every
    step into three micro-batches and rebuild their graphs; fed in slot order each step is one graph, reused."""
    long, short = GenerationParams(max_tokens=400, ignore_eos=True), GenerationParams(max_tokens=3, ignore_eos=True)
    with batcher._cond:
        streams = [batcher.stream(p, long if i != 1 else short) for i, p in enumerate(PROMPTS)]
    assert len(list(streams[1])) == 3
    assert wait_until(lambda: batcher.slot_tokens()[1] > 0 and batcher.running == 3)
    late = GenerationParams(max_tokens=30, ignore_eos=True)
    reused = batcher.engine_timings()["graphs_reused"]
    events = list(batcher.stream("a newcomer joins the running batch", late))
    reused = batcher.engine_timings()["graphs_reused"] - reused
    assert batcher.running == 3, "the long requests were still decoding beside it"
    for s in streams:
        s.close()
    assert [e.token_id for e in events] == cpp.generate("a newcomer joins the running batch", late).token_ids
    assert reused >= 25, f"llama.cpp reused its graph on {reused} of the newcomer's ~30 steps"


def test_closing_a_stream_frees_its_slot_at_once(cpp: LlamaCppRuntime, batcher: LlamaBatcher) -> None:
    s = batcher.stream(PROMPTS[0], GenerationParams(max_tokens=400, ignore_eos=True))
    next(s)
    s.close()
    assert wait_until(lambda: batcher.running == 0, timeout=1.0)
    made = batcher.stats.tokens
    time.sleep(0.05)
    assert batcher.stats.tokens == made < 400, "generation stopped when the consumer left"
    assert len(list(batcher.stream(PROMPTS[3], GenerationParams(max_tokens=3, ignore_eos=True)))) == 3


def test_more_requests_than_slots_wait_for_one(cpp: LlamaCppRuntime) -> None:
    b = LlamaBatcher(cpp, slots=2)
    try:
        params = GenerationParams(max_tokens=8, ignore_eos=True)
        streams = [b.stream(p, params) for p in PROMPTS]
        assert [len(list(s)) for s in streams] == [8] * 4
        assert b.stats.max_batch == 2 and b.context_length == cpp.context_length
    finally:
        b.close()


def test_refusals(cpp: LlamaCppRuntime, batcher: LlamaBatcher) -> None:
    with pytest.raises(PromptTooLong, match="512"):
        batcher.stream(list(range(5, 5 + 600)), GenerationParams(max_tokens=4))
    with pytest.raises(Exception, match="no adapter named"):
        batcher.stream(PROMPTS[0], GenerationParams(max_tokens=4), adapter="nope")
    batcher.close()
    with pytest.raises(Exception, match="unloaded"):
        batcher.stream(PROMPTS[0], GenerationParams(max_tokens=4))
