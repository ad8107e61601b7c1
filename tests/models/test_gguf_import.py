"""GGUF in: tiny llama/qwen2/phi3 exported by our converter come back from GGUF as the same model, and bad files are refused.

The round trip (HF → ``export.gguf`` f32 → ``models.from_gguf``) must give back every tensor bit
for bit (so the name tables and llama's Q/K row permutation are exactly inverted), the same
hyper-parameters, and a tokenizer that encodes every sample string to the same ids with the same
chat template. Each bad file is refused with one line naming the file and the fix, and leaves
nothing in the store.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slmops.testing.smollm2 import TOKENIZER_STRINGS

ARCHES = ("llama", "qwen2", "phi3")
CONFIG_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "max_position_embeddings", "tie_word_embeddings", "vocab_size", "rms_norm_eps")


@pytest.fixture(scope="module")
def exported(model_store: Any, tiny_models: dict[str, Any]) -> dict[str, Any]:
    from slmops.stage.runner import run_stage

    return {arch: run_stage("export.gguf", {"model": m}, {"qtype": "f32"}, store=model_store).artifact for arch, m in tiny_models.items()}


def _tensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    out: dict[str, np.ndarray] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _tokenizer(art: Any) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(art.path))


@pytest.mark.parametrize("arch", ARCHES)
def test_round_trip_gives_back_the_same_model(arch: str, model_store: Any, tiny_models: dict[str, Any], exported: dict[str, Any]) -> None:
    from slmops.stage.inputs import resolve_input

    orig = tiny_models[arch]
    back = resolve_input(f"sha256:{exported[arch].digest}", model_store, kind="model")  # a GGUF where a model is needed: dequantized
    assert back.kind == "model" and back.manifest.stage.name == "models.from_gguf"
    assert [p.digest for p in back.manifest.parents] == [exported[arch].digest]

    a, b = _tensors(orig.path), _tensors(back.path)
    cfg_a, cfg_b = (json.loads((x.path / "config.json").read_text()) for x in (orig, back))
    if cfg_a.get("tie_word_embeddings"):
        a.pop("lm_head.weight", None)
    assert sorted(a) == sorted(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert cfg_b["architectures"] == cfg_a["architectures"]
    for k in CONFIG_KEYS:
        assert cfg_b[k] == cfg_a[k], k
    assert cfg_b["rope_parameters"]["rope_theta"] == cfg_a["rope_parameters"]["rope_theta"]

    ta, tb = _tokenizer(orig), _tokenizer(back)
    for text in TOKENIZER_STRINGS:
        assert tb.encode(text) == ta.encode(text), text
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi 123"}]
    assert tb.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == ta.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert (tb.bos_token, tb.eos_token, tb.add_bos_token) == (ta.bos_token, ta.eos_token, ta.add_bos_token)


def test_quantized_gguf_dequantizes_close_to_the_original(model_store: Any, tiny_models: dict[str, Any]) -> None:
    from slmops.stage.inputs import as_model
    from slmops.stage.runner import run_stage

    orig = tiny_models["llama"]
    q8 = run_stage("export.gguf", {"model": orig}, {"qtype": "q8_0"}, store=model_store).artifact
    back = as_model(q8, model_store)
    a, b = _tensors(orig.path), _tensors(back.path)
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight", "model.layers.0.mlp.down_proj.weight"):
        err = np.abs(a[name] - b[name]).max() / np.abs(a[name]).max()
        assert err < 0.01, (name, err)  # Q8_0: 8 bits per block of 32, rows back in transformers' order


# -- bad input -----------------------------------------------------------------------------------------
def _nothing_stored(home: Path) -> None:
    from slmops.store import Store

    with Store(home) as s:
        assert s.artifacts_list(named_only=False) == []
    leftovers = [p for p in (home / "artifacts").iterdir()] if (home / "artifacts").is_dir() else []
    assert [p.name for p in leftovers if not p.name.startswith(".")] == []
    tmp = home / "artifacts" / ".tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []


def _one_line_error(r: Any, *needles: str) -> None:
    assert r.code == 1, (r.out, r.err)
    text = " ".join(r.err.split())
    assert "Traceback" not in r.err
    for n in needles:
        assert n in text, (n, r.err)


def _write_gguf(path: Path, arch: str, tensors: dict[str, tuple[np.ndarray, Any]]) -> Path:
    """A minimal GGUF: an architecture, a few hyper-parameters and the given (array, raw type) tensors."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_embedding_length(256)
    w.add_head_count(4)
    w.add_feed_forward_length(512)
    w.add_context_length(128)
    for name, (arr, raw) in tensors.items():
        if raw is None:
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, arr, raw_dtype=raw)  # arr holds the bytes of the blocks
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not-gguf"])
def test_damaged_gguf_is_refused_and_nothing_is_stored(damage: str, exported: dict[str, Any], tmp_path: Path, cli: Any, slmops_home: Path) -> None:
    src = exported["llama"].path / "model.gguf"
    bad = tmp_path / f"{damage}.gguf"
    data = src.read_bytes()
    if damage == "truncated":
        bad.write_bytes(data[: len(data) * 2 // 3])
    elif damage == "garbage":
        bad.write_bytes(data[:8] + bytes(range(256)) * 64)
    else:
        bad.write_text("this is not a model\n")
    for extra in ((), ("--to", "hf")):
        r = cli("models", "import", str(bad), "--name", "bad", *extra)
        _one_line_error(r, bad.name, "download or copy the file again")
    _nothing_stored(slmops_home)


def test_unsupported_architecture_is_refused_for_hf(tmp_path: Path, cli: Any, slmops_home: Path) -> None:
    f = _write_gguf(tmp_path / "gpt2ish.gguf", "gpt2", {"token_embd.weight": (np.zeros((8, 256), np.float32), None)})
    r = cli("models", "import", str(f), "--name", "g", "--to", "hf")
    _one_line_error(r, "gpt2ish.gguf", "'gpt2'", "without --to hf")
    _nothing_stored(slmops_home)


def test_tensor_types_we_cannot_dequantize_are_refused(tmp_path: Path, cli: Any, slmops_home: Path) -> None:
    import gguf

    q8k = np.zeros((4, 292), np.uint8)  # one Q8_K block (256 values) per row: no dequantizer exists for it
    f = _write_gguf(tmp_path / "q8k.gguf", "llama", {"token_embd.weight": (q8k, gguf.GGMLQuantizationType.Q8_K)})
    r = cli("models", "import", str(f), "--name", "q", "--to", "hf")
    _one_line_error(r, "q8k.gguf", "Q8_K", "cannot dequantize", "without --to hf")
    _nothing_stored(slmops_home)


def test_gguf_path_works_where_a_model_reference_is_accepted(exported: dict[str, Any], tmp_path: Path, cli: Any) -> None:
    copy = tmp_path / "tiny.gguf"
    shutil.copyfile(exported["qwen2"].path / "model.gguf", copy)
    r = cli("generate", str(copy), "hello", "--max-tokens", "4", "--json")
    assert r.code == 0, r.err
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"input": f"{i} plus one?", "output": str(i + 1)}) + "\n" for i in range(3)))
    r = cli("eval", str(copy), "--data", str(data), "--max-tokens", "4", "--json")
    assert r.code == 0, r.err
    r = cli("models", "show", str(copy), "--json")
    assert r.code == 0, r.err
    m = r.json
    assert m["kind"] == "gguf" and m["stage"]["name"] == "models.import_gguf"
    assert m["meta"]["source"] == str(copy) and len(m["meta"]["file_sha256"]) == 64


def test_llama3_rope_scaling_is_read_back_from_rope_freqs(store: Any, tmp_path: Path) -> None:
    """Llama 3.1/3.2 keep their rope scaling in GGUF only as a ``rope_freqs`` tensor; it comes back as the same rope_parameters."""
    import torch
    import transformers

    from slmops.stage.inputs import as_model
    from slmops.stage.runner import run_stage

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}
    cfg = transformers.LlamaConfig(vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=1024, rope_parameters=rope, tie_word_embeddings=True)
    torch.manual_seed(0)
    folder = tmp_path / "llama3"
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(folder))
    from slmops.models.tokenizer import save_tokenizer, train_tokenizer
    from slmops.testing.tiny import tiny_corpus

    save_tokenizer(train_tokenizer(tiny_corpus(200), vocab_size=400), folder)
    with store.staging() as tmp:
        for f in folder.iterdir():
            shutil.copy2(f, tmp / f.name)
        art = store.commit(tmp, kind="model", format="hf-safetensors")
    g = run_stage("export.gguf", {"model": art}, {"qtype": "f32"}, store=store).artifact
    back = json.loads((as_model(g, store).path / "config.json").read_text())
    assert back["rope_parameters"] == rope


def test_served_file_gets_a_registry_id_and_answers_without_preload(exported: dict[str, Any], tmp_path: Path, store: Any) -> None:
    """``slmops serve ./tiny.gguf`` (no --preload): imported, served as ``tiny``, loaded on the first request."""
    import openai

    from slmops.serve import ServeConfig
    from slmops.serve.app import create_app
    from slmops.serve.paths import served_id
    from slmops.testing.server import running_server

    copy = tmp_path / "tiny.gguf"
    shutil.copyfile(exported["qwen2"].path / "model.gguf", copy)
    assert served_id(str(copy), store) == "tiny" == served_id(str(copy), store)
    assert served_id("tiny", store) == "tiny"
    assert served_id("bot-onnx/tuned", store) == "bot-onnx/tuned"  # an id of a packaged adapter, not a path
    other = tmp_path / "other" / "tiny.gguf"  # same name, another model: served by digest, "tiny" untouched
    other.parent.mkdir()
    shutil.copyfile(exported["llama"].path / "model.gguf", other)
    sid = served_id(str(other), store)
    assert sid.startswith("sha256:") and len(store.versions("tiny")) == 1
    app = create_app(ServeConfig(models=["tiny", sid], log_requests=False), store=store)
    with running_server(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        assert sorted(m.id for m in client.models.list().data) == sorted(["tiny", sid])
        r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0)
        assert r.usage.completion_tokens > 0


def test_recipe_takes_a_gguf_path_and_dequantizes_it_for_fine_tuning(exported: dict[str, Any], tmp_path: Path, cli: Any) -> None:
    copy = tmp_path / "tiny.gguf"
    shutil.copyfile(exported["llama"].path / "model.gguf", copy)
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"input": f"{i} plus one?", "output": str(i + 1)}) + "\n" for i in range(12)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""name: from-gguf
steps:
  hf:
    stage: models.from_gguf
    inputs: {{model: "{copy}"}}
  tuned:
    stage: finetune.lora
    inputs: {{model: "${{hf}}", data: "{data}"}}
    config: {{max_steps: 1, batch_size: 4}}
""")
    r = cli("run", str(recipe), "--json")
    assert r.code == 0, r.err
    steps = {s["step"]: s for s in r.json["steps"]}
    assert steps["hf"]["artifact_kind"] == "model" and steps["tuned"]["artifact_kind"] == "adapter"
