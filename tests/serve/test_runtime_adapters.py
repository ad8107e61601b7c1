"""Adapters on the other runtimes through the server: GGUF LoRAs on llama.cpp, ONNX Runtime adapters on ORT GenAI.

One module-scoped server serves a torch base (``bot:1``), its GGUF export (``ra-gguf``; ``ra-gguf2`` is
``bot:2``'s, not served), a GGUF LoRA
artifact (``ra-lora-gguf``, ``export.gguf_lora`` of ``bot-lora``), an ONNX export with ``bot-lora``
packaged as the run-time adapter ``tuned`` (``ra-onnx-lora``) and a plain ONNX export (``ra-onnx``).
Each adapter's greedy answer through the official client must be the one its runtime gives when
opened directly with that adapter, and differ from the base's; refusals are 400s in OpenAI's shape.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from serve_helpers import CHAT

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("onnxruntime_genai") is None,
    reason="needs llama-cpp-python and onnxruntime-genai",
)

N = 8
MODELS = ["bot:1", "ra-gguf", "ra-lora-gguf", "ra-onnx-lora", "ra-onnx"]


@pytest.fixture(scope="module")
def arts(serve_home: Path) -> dict[str, Any]:
    from slmops.stage.runner import run_stage
    from slmops.store import Store

    with Store(serve_home) as store:
        base, other, lora = store.lookup("bot", version=1), store.lookup("bot", version=2), store.lookup("bot-lora")
        onnx_cfg = {"precision": "fp32", "adapter_mode": "runtime", "adapter_name": "tuned", "parity_texts": 0}
        steps = {
            "gguf": ("export.gguf", {"model": base}, {"qtype": "f32"}, "ra-gguf"),
            "gguf2": ("export.gguf", {"model": other}, {"qtype": "f32"}, "ra-gguf2"),  # another base, same shapes
            "lora_gguf": ("export.gguf_lora", {"adapter": lora, "model": base}, {}, "ra-lora-gguf"),
            "onnx_lora": ("export.onnx", {"model": base, "adapter": lora}, onnx_cfg, "ra-onnx-lora"),
            "onnx": ("export.onnx", {"model": base}, {"precision": "fp32", "parity_texts": 0}, "ra-onnx"),
        }
        out = {k: run_stage(stage, ins, cfg, store=store, output_name=name).artifact for k, (stage, ins, cfg, name) in steps.items()}
        return {**out, "peft": lora}


@pytest.fixture(scope="module")
def server(module_servers: Any, arts: dict[str, Any]) -> Any:
    return module_servers(models=MODELS, max_loaded=len(MODELS))


def local(art: Any, adapter: tuple[str, Path] | str | None = None) -> str:
    """The greedy answer of ``art``'s own runtime, opened directly (``adapter``: (name, path) to load, or a packaged name)."""
    from slmops.runtimes import GenerationParams, open_runtime

    with open_runtime(art) as rt:
        name = adapter
        if isinstance(adapter, tuple):
            name, path = adapter
            rt.load_adapter(name, path)
        kw = {"adapter": name} if name is not None else {}
        return rt.generate(rt.apply_chat_template(CHAT), GenerationParams(max_tokens=N), **kw).text


def greedy(server: Any, model: str) -> str:
    r = server.client().chat.completions.create(model=model, messages=CHAT, max_tokens=N, temperature=0)
    return r.choices[0].message.content


def load(server: Any, name: str, path: str | Path, base: str | None = None) -> httpx.Response:
    body = {"lora_name": name, "lora_path": str(path), **({"base_model": base} if base else {})}
    return httpx.post(f"{server.url}/v1/load_lora_adapter", json=body, timeout=60)


def unload(server: Any, name: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60)


def refused(r: httpx.Response, code: str, *words: str) -> dict[str, Any]:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["code"] == code, err
    for w in words:
        assert w in err["message"], err
    return err


def test_gguf_lora_loaded_at_run_time_on_a_gguf_base(server: Any, arts: dict[str, Any]) -> None:
    file = arts["lora_gguf"].path / "adapter.gguf"
    want, base = local(arts["gguf"], ("t", file)), local(arts["gguf"])
    assert want != base, "the LoRA changes the greedy answer"
    assert greedy(server, "ra-gguf") == base

    r = load(server, "g-file", file)  # (a) a GGUF LoRA file; the one GGUF base served is the base it goes on
    assert r.status_code == 200, r.text
    assert r.json()["format"] == "gguf-lora" and r.json()["base"].startswith("ra-gguf")
    assert greedy(server, "g-file") == want
    assert load(server, "g-ref", "ra-lora-gguf").status_code == 200  # (b) the export.gguf_lora artifact; the GGUF base is found
    assert load(server, "g-peft", "bot-lora", base="ra-gguf").json()["format"] == "peft"  # (c) PEFT, converted by llama.cpp's runtime
    assert greedy(server, "g-ref") == greedy(server, "g-peft") == want
    assert greedy(server, "ra-lora-gguf") == want, "the GGUF LoRA artifact is a model id of its own, on its GGUF base"
    assert greedy(server, "ra-gguf") == base, "the base stays the base"
    ids = [m.id for m in server.client().models.list().data]
    assert {"g-file", "g-ref", "g-peft"} <= set(ids)
    entry = server.service.pool.find("ra-gguf")
    assert entry.runtime.name == "llamacpp" and {"lora-g-file", "lora-g-ref", "lora-g-peft"} <= set(entry.runtime.adapters)

    assert unload(server, "g-file").status_code == 200
    with pytest.raises(openai.NotFoundError):
        greedy(server, "g-file")
    assert "lora-g-file" not in entry.runtime.adapters
    assert greedy(server, "g-ref") == want
    assert unload(server, "g-ref").status_code == 200 and unload(server, "g-peft").status_code == 200


def test_onnx_adapters_as_model_ids_and_at_run_time(server: Any, arts: dict[str, Any]) -> None:
    art = arts["onnx_lora"]
    want, base = local(art, "tuned"), local(art)
    assert want != base
    assert want == local(arts["gguf"], ("t", arts["lora_gguf"].path)), "ONNX and GGUF apply the same LoRA alike"
    assert "ra-onnx-lora/tuned" in [m.id for m in server.client().models.list().data]
    assert greedy(server, "ra-onnx-lora/tuned") == want
    labels = [m["label"] for m in httpx.get(f"{server.url}/dashboard/data").json()["loaded"]]
    assert any(x.startswith("ra-onnx-lora:") for x in labels), f"a base loaded through its adapter is named, not hashed: {labels}"
    assert greedy(server, "ra-onnx-lora") == base, "an ONNX export answers as its base; its packaged adapter is an id of its own"
    card = httpx.get(f"{server.url}/v1/models/ra-onnx-lora/tuned").json()
    assert card["adapter"] is True and card["version"].endswith("/tuned")
    with pytest.raises(openai.NotFoundError):
        greedy(server, "ra-onnx-lora/nope")
    with pytest.raises(openai.NotFoundError):
        greedy(server, "ra-onnx/tuned")

    assert load(server, "o-named", "ra-onnx-lora/tuned").json()["format"] == "onnx-adapter"  # the packaged adapter, named
    assert load(server, "o-file", art.path / "adapters" / "tuned.onnx_adapter", base="ra-onnx-lora").status_code == 200
    assert load(server, "o-peft", "bot-lora", base="ra-onnx-lora").status_code == 200  # PEFT, converted to the model's LoRA inputs
    assert greedy(server, "o-named") == greedy(server, "o-file") == greedy(server, "o-peft") == want
    entry = server.service.pool.find("ra-onnx-lora")
    assert entry.runtime.name == "ort-genai" and len(server.service.pool.entries) <= len(MODELS)
    assert unload(server, "o-peft").status_code == 200
    with pytest.raises(openai.NotFoundError):
        greedy(server, "o-peft")
    assert "lora-o-peft" not in entry.runtime.adapters and "tuned" in entry.runtime.adapters
    assert greedy(server, "ra-onnx-lora/tuned") == want
    assert unload(server, "o-named").status_code == 200 and unload(server, "o-file").status_code == 200


def test_adapters_that_do_not_fit_are_400(server: Any, arts: dict[str, Any], tmp_path: Path) -> None:
    gguf_file = arts["lora_gguf"].path / "adapter.gguf"
    onnx_file = arts["onnx_lora"].path / "adapters" / "tuned.onnx_adapter"
    # the format the base's runtime cannot apply
    refused(load(server, "x", gguf_file, base="bot:1"), "lora_base_mismatch", "GGUF LoRA", "torch", "GGUF export")
    refused(load(server, "x", "ra-lora-gguf", base="ra-onnx-lora"), "lora_base_mismatch", "GGUF LoRA")
    refused(load(server, "x", onnx_file, base="ra-gguf"), "lora_base_mismatch", "ONNX Runtime adapter", "llama.cpp")
    # trained on another model: a store adapter, and a PEFT folder outside the store that names its base
    refused(load(server, "x", "bot-lora", base="bot:2"), "lora_base_mismatch", "trained on", "base_model")
    refused(load(server, "x", "ra-lora-gguf", base="ra-gguf2"), "lora_base_mismatch", "trained on", "built from")
    folder = tmp_path / "copy"
    shutil.copytree(arts["peft"].path, folder)
    trained_on = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert trained_on == str(server.store.lookup("bot", version=1).path)
    refused(load(server, "x", folder, base="bot:2"), "lora_base_mismatch", "trained on")
    assert load(server, "copy", folder).status_code == 200
    assert server.service.catalog.loras["copy"].base_ref == "bot:1", "with no base_model: the served base it was trained on"
    assert unload(server, "copy").status_code == 200
    # an ONNX export without LoRA inputs: the runtime refuses, still a 400
    err = refused(load(server, "x", "bot-lora", base="ra-onnx"), "invalid_lora", "without LoRA inputs", "--adapter-mode runtime")
    assert err["param"] == "lora_path"
    assert "x" not in [m.id for m in server.client().models.list().data]


def test_adapter_paths_are_checked_before_any_runtime_sees_them(server: Any, arts: dict[str, Any], tmp_path: Path) -> None:
    refused(load(server, "x", arts["gguf"].path / "model.gguf", base="ra-gguf"), "invalid_lora", "not a LoRA adapter")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf file at all")
    refused(load(server, "x", fake, base="ra-gguf"), "invalid_lora", "not a GGUF file")
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2")
    err = refused(load(server, "x", secret, base="ra-gguf"), "invalid_lora", "not an adapter file")
    assert "hunter2" not in err["message"]
    bad = tmp_path / "bad.onnx_adapter"
    bad.write_bytes(b"\x00" * 64)
    refused(load(server, "x", bad, base="ra-onnx-lora"), "invalid_lora", "not an ONNX Runtime adapter")
    escape = tmp_path / "escape"
    escape.mkdir()
    (escape / "adapter.gguf").symlink_to(arts["lora_gguf"].path / "adapter.gguf")
    refused(load(server, "x", escape, base="ra-gguf"), "invalid_lora", "outside its adapter folder")
    refused(load(server, "x", tmp_path / "missing", base="ra-gguf"), "invalid_lora", "no adapter at")
    refused(load(server, "x", "no-such-adapter", base="ra-gguf"), "invalid_lora", "no adapter")
    assert "x" not in [m.id for m in server.client().models.list().data]


def test_adapter_id_served_next_to_a_gguf_goes_on_that_gguf(start_server: Any, arts: dict[str, Any]) -> None:
    """A PEFT adapter id served beside a GGUF export of its base runs on that GGUF (converted to a GGUF LoRA on load),
    not on a second, fp32 torch copy of the base; with the torch base served too, it goes on the torch base."""
    server = start_server(models=["ra-gguf", "bot-lora"], max_loaded=2)
    want = local(arts["gguf"], ("t", arts["peft"].path))
    assert want != local(arts["gguf"])
    assert greedy(server, "bot-lora") == want
    entries = list(server.service.pool.entries.values())
    assert [e.runtime.name for e in entries] == ["llamacpp"], "no fp32 torch base loaded next to the GGUF"
    assert entries[0].label.startswith("ra-gguf:") and "bot-lora" in entries[0].adapters.values()
    assert greedy(server, "ra-gguf") == local(arts["gguf"]), "the GGUF itself still answers as the base"

    both = start_server(models=["bot:1", "ra-gguf", "bot-lora"], max_loaded=3)
    assert both.service.catalog.resolve("bot-lora").base.kind == "model", "the model it was trained on, when served, takes it"
