"""The model pool (load on first use, TTL unload, LRU cap), Foundry-style management routes, and adapters as model ids."""

from __future__ import annotations

from typing import Any

import httpx
from serve_helpers import CHAT, wait_until


def loaded(server: Any) -> list[str]:
    return httpx.get(f"{server.url}/openai/loadedmodels").json()


def greedy(server: Any, model: str, n: int = 12) -> str:
    return server.client().chat.completions.create(model=model, messages=CHAT, max_tokens=n, temperature=0).choices[0].message.content


def test_load_on_first_request_and_ttl_unload(start_server: Any) -> None:
    server = start_server(models=["bot:1"], ttl_s=0.3)
    assert loaded(server) == []
    greedy(server, "bot:1", 2)
    assert loaded(server) == ["bot:1"]
    assert wait_until(lambda: loaded(server) == [], timeout=5), "an idle model must unload after its TTL"
    assert "slmops_loaded_models 0.0" in httpx.get(f"{server.url}/metrics").text


def test_max_loaded_evicts_least_recently_used(start_server: Any) -> None:
    server = start_server(models=["bot:1", "bot:2"], max_loaded=1)
    a = greedy(server, "bot:1")
    assert loaded(server) == ["bot:1"]
    greedy(server, "bot:2")
    assert loaded(server) == ["bot:2"]
    assert greedy(server, "bot:1") == a  # reloaded on demand, same answer
    assert loaded(server) == ["bot:1"]


def test_foundry_style_load_unload(start_server: Any) -> None:
    server = start_server(models=["bot:1"])
    r = httpx.post(f"{server.url}/openai/load/bot:1", params={"ttl": 120})
    assert r.status_code == 200 and r.json()["ttl_s"] == 120
    assert loaded(server) == ["bot:1"]
    # loading an id that is not listed adds it to what is served
    assert httpx.post(f"{server.url}/openai/load/bot@canary").status_code == 200
    assert "bot@canary" in [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]]
    assert httpx.post(f"{server.url}/openai/unload/bot:1").json()["unloaded"] is True
    assert loaded(server) == ["bot@canary"]


def test_adapter_artifact_is_a_model_id(start_server: Any) -> None:
    server = start_server(models=["bot:1", "bot-lora"])
    base = greedy(server, "bot:1")
    tuned = greedy(server, "bot-lora")
    assert tuned != base, "a LoRA with non-zero weights changes the greedy answer"
    assert greedy(server, "bot:1") == base, "the base stays the base with an adapter loaded"
    assert sorted(loaded(server)) == ["bot-lora", "bot:1"]
    assert len(server.service.pool.entries) == 1, "the adapter rides on its loaded base"
    # both at once, batched with different adapters per row
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(lambda m: greedy(server, m), ["bot:1", "bot-lora", "bot:1", "bot-lora"]))
    assert outs == [base, tuned, base, tuned]


def test_load_and_unload_lora_adapter_at_run_time(start_server: Any) -> None:
    server = start_server(models=["bot:1"])
    tuned_ref = start_server(models=["bot-lora"])
    expected = greedy(tuned_ref, "bot-lora")
    r = httpx.post(f"{server.url}/v1/load_lora_adapter", json={"lora_name": "support", "lora_path": "bot-lora"})
    assert r.status_code == 200, r.text
    assert "support" in [m.id for m in server.client().models.list().data]
    assert greedy(server, "support") == expected
    # a plain PEFT folder works too, on the named base
    path = server.store.lookup("bot-lora").path
    r = httpx.post(f"{server.url}/v1/load_lora_adapter", json={"lora_name": "folder", "lora_path": str(path), "base_model": "bot:1"})
    assert r.status_code == 200, r.text
    assert greedy(server, "folder") == expected
    assert httpx.post(f"{server.url}/v1/load_lora_adapter", json={"lora_name": "support", "lora_path": "bot-lora"}).status_code == 400
    assert httpx.post(f"{server.url}/v1/unload_lora_adapter", json={"lora_name": "support"}).status_code == 200
    assert httpx.post(f"{server.url}/v1/chat/completions", json={"model": "support", "messages": CHAT}).status_code == 404
    assert greedy(server, "folder") == expected
