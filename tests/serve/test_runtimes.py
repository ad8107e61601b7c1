"""The server on the other runtimes: a GGUF export runs on llama.cpp (its LoRA applied), through the official client."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import CHAT

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("slmops.export.stages_gguf") is None,
    reason="needs llama-cpp-python and the GGUF exporter",
)


@pytest.fixture(scope="module")
def gguf_models(serve_home: Path) -> dict[str, str]:
    from slmops.stage.runner import run_stage
    from slmops.store import Store

    with Store(serve_home) as store:
        base = store.lookup("bot", version=1)
        lora = store.lookup("bot-lora")
        run_stage("export.gguf", {"model": base}, {"qtype": "f32"}, store=store, output_name="bot-gguf")
        run_stage("export.gguf", {"model": base, "adapter": lora}, {"qtype": "f32"}, store=store, output_name="bot-gguf-lora")
    return {"base": "bot-gguf", "lora": "bot-gguf-lora"}


def local(serve_home: Path, name: str, n: int) -> str:
    from slmops.runtimes import GenerationParams, open_runtime
    from slmops.store import Store

    with Store(serve_home) as store:
        art = store.lookup(name)
    rt = open_runtime(art)
    try:
        return rt.generate(rt.apply_chat_template(CHAT), GenerationParams(max_tokens=n)).text
    finally:
        rt.close()


def test_gguf_on_llamacpp_through_the_openai_client(start_server: Any, gguf_models: dict[str, str], serve_home: Path) -> None:
    server = start_server(models=list(gguf_models.values()))
    c = server.client()
    base = c.chat.completions.create(model="bot-gguf", messages=CHAT, max_tokens=10, temperature=0)
    assert base.choices[0].message.content == local(serve_home, "bot-gguf", 10)
    entry = server.entry("bot-gguf:1")
    assert entry.runtime.name == "llamacpp" and entry.scheduler.slots == 4  # batched: --parallel slots
    chunks = list(c.chat.completions.create(model="bot-gguf", messages=CHAT, max_tokens=10, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == base.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == base.usage.completion_tokens
    comp = c.completions.create(model="bot-gguf", prompt="the quick brown fox", max_tokens=5, temperature=0, logprobs=2)
    assert len(comp.choices[0].logprobs.tokens) == comp.usage.completion_tokens
    tuned = c.chat.completions.create(model="bot-gguf-lora", messages=CHAT, max_tokens=10, temperature=0)
    assert tuned.choices[0].message.content == local(serve_home, "bot-gguf-lora", 10)
    assert tuned.choices[0].message.content != base.choices[0].message.content


def test_gguf_context_overflow_is_400(start_server: Any, gguf_models: dict[str, str]) -> None:
    import httpx

    server = start_server(models=["bot-gguf"])
    r = httpx.post(f"{server.url}/v1/completions", json={"model": "bot-gguf", "prompt": "hi", "max_tokens": 100000}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_onnx_on_ort_genai_through_the_openai_client(start_server: Any, serve_home: Path) -> None:
    from slmops.stage.runner import run_stage
    from slmops.store import Store

    with Store(serve_home) as store:
        run_stage("export.onnx", {"model": store.lookup("bot", version=1)}, {"precision": "fp32"}, store=store, output_name="bot-onnx")
    server = start_server(models=["bot-onnx"])
    c = server.client()
    reply = c.chat.completions.create(model="bot-onnx", messages=CHAT, max_tokens=10, temperature=0)
    assert reply.choices[0].message.content == local(serve_home, "bot-onnx", 10)
    assert reply.choices[0].message.content == local(serve_home, "bot", 10), "fp32 ONNX answers as the torch model does"
    assert server.entry("bot-onnx:1").runtime.name == "ort-genai"
    chunks = list(c.chat.completions.create(model="bot-onnx", messages=CHAT, max_tokens=10, temperature=0, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == reply.choices[0].message.content
