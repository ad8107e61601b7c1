"""The server's llama.cpp fast path through the official client: batching, prefix cache, cancellation, LoRA isolation, 400s.

``bot-gguf`` is the f32 GGUF export of ``bot:1`` (context 512, so one slot's share is 512 tokens);
``bot-lora-gguf`` its LoRA as a GGUF adapter, loaded at run time as ``g``. Every greedy answer given
while other requests share the batch must be the one the same request gets alone.
"""

from __future__ import annotations

import importlib.util
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_helpers import CHAT, wait_until

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("slmops.export.stages_gguf") is None,
    reason="needs llama-cpp-python and the GGUF exporter",
)

SYSTEM = " ".join(["You are a careful assistant. Answer in short, plain sentences and say when you do not know."] * 3)


@pytest.fixture(scope="module")
def arts(serve_home: Path) -> dict[str, Any]:
    from slmops.stage.runner import run_stage
    from slmops.store import Store

    with Store(serve_home) as store:
        base, lora = store.lookup("bot", version=1), store.lookup("bot-lora")
        gguf = run_stage("export.gguf", {"model": base}, {"qtype": "f32"}, store=store, output_name="bot-gguf").artifact
        adapter = run_stage("export.gguf_lora", {"adapter": lora, "model": base}, {}, store=store, output_name="bot-lora-gguf").artifact
    return {"gguf": gguf, "lora": adapter}


def metric(server: Any, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    m = re.search(rf'^{name}{{model="bot-gguf:1"}} ([0-9.e+-]+)$', text, re.MULTILINE)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def chat(server: Any, content: str, *, model: str = "bot-gguf", n: int = 48, system: str | None = None) -> str:
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    r = server.client().chat.completions.create(model=model, messages=msgs, max_tokens=n, temperature=0, extra_body={"ignore_eos": True})
    return r.choices[0].message.content


def test_concurrent_requests_share_steps_and_answer_as_alone(start_server: Any, arts: dict[str, Any]) -> None:
    server = start_server(models=["bot-gguf"], parallel=4)
    questions = [f"question number {i}: what is a small model?" for i in range(4)]
    alone = [chat(server, q, n=400) for q in questions]
    assert server.entry("bot-gguf:1").scheduler.slots == 4
    gate = threading.Barrier(4)

    def together(q: str) -> str:
        gate.wait()
        return chat(server, q, n=400)

    with ThreadPoolExecutor(4) as ex:
        assert list(ex.map(together, questions)) == alone
    assert metric(server, "slmops_batch_size_max") > 1, "concurrent requests should run in the same llama_decode steps"
    assert metric(server, "slmops_batch_steps") > 0


def test_repeated_system_prompt_hits_the_prefix_cache(start_server: Any, arts: dict[str, Any]) -> None:
    def ask(server: Any, question: str) -> tuple[str, list[float]]:
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        r = server.client().chat.completions.create(model="bot-gguf", messages=msgs, max_tokens=8, temperature=0, logprobs=True,
                                                    extra_body={"ignore_eos": True})
        return r.choices[0].message.content, [t.logprob for t in r.choices[0].logprobs.content]

    server = start_server(models=["bot-gguf"], parallel=2)
    ask(server, "What is a llama?")
    assert metric(server, "slmops_prefix_cache_hits") == 0
    second = ask(server, "And a small model?")
    assert metric(server, "slmops_prefix_cache_hits") == 1
    rt = server.entry("bot-gguf:1").runtime
    system_tokens = len(rt.encode_prompt(rt.apply_chat_template([{"role": "system", "content": SYSTEM}], add_generation_prompt=False)))
    assert system_tokens > 50 and metric(server, "slmops_prefix_cache_hit_tokens") >= system_tokens - 2
    fresh = ask(start_server(models=["bot-gguf"], parallel=2), "And a small model?")
    assert fresh[0] == second[0], "a cached prefix gives the answer of a fresh server"
    assert fresh[1] == pytest.approx(second[1], abs=1e-4), "and the same distributions (the reused cells are the right ones)"


def test_disconnect_frees_the_slot_within_a_second(start_server: Any, arts: dict[str, Any]) -> None:
    server = start_server(models=["bot-gguf"], parallel=1, max_queue=0)
    body = {"model": "bot-gguf", "messages": CHAT, "max_tokens": 480, "ignore_eos": True, "temperature": 0, "stream": True}
    with httpx.Client(timeout=30) as client, client.stream("POST", f"{server.url}/v1/chat/completions", json=body) as resp:
        next(ln for ln in resp.iter_lines() if ln.startswith("data:"))
    t0 = time.monotonic()
    entry = server.entry("bot-gguf:1")
    assert wait_until(lambda: entry.engine.batcher.running == 0 and entry.scheduler.running == 0, timeout=1.0)
    assert time.monotonic() - t0 < 1.0
    assert entry.engine.stats.tokens < 480, "generation stopped when the client left"
    r = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "stream": False, "max_tokens": 2}, timeout=30)
    assert r.status_code == 200, "the slot is free again (max_queue=0 would refuse a request that had to wait)"


def test_a_requests_lora_does_not_leak_into_the_batch(start_server: Any, arts: dict[str, Any]) -> None:
    server = start_server(models=["bot-gguf"], parallel=4)
    r = httpx.post(f"{server.url}/v1/load_lora_adapter", json={"lora_name": "g", "lora_path": str(arts["lora"].path / "adapter.gguf"),
                                                              "base_model": "bot-gguf"}, timeout=60)
    assert r.status_code == 200, r.text
    qs = ["tell me about llamas", "what is a small model?", "say something"]
    base = [chat(server, q, n=24) for q in qs]
    tuned = [chat(server, q, model="g", n=24) for q in qs]
    assert base != tuned, "the LoRA changes the answers"
    jobs = [(q, m) for q in qs for m in ("bot-gguf", "g")]
    gate = threading.Barrier(len(jobs))

    def run(job: tuple[str, str]) -> str:
        gate.wait()
        return chat(server, job[0], model=job[1], n=24)

    with ThreadPoolExecutor(len(jobs)) as ex:
        got = list(ex.map(run, jobs))
    assert got == [x for pair in zip(base, tuned, strict=True) for x in pair]


def test_prompt_plus_max_tokens_beyond_a_slot_is_400_naming_both(start_server: Any, arts: dict[str, Any]) -> None:
    server = start_server(models=["bot-gguf"], parallel=2)
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "bot-gguf", "messages": CHAT, "max_tokens": 600}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and "512" in err["message"] and "600 in the completion" in err["message"]
