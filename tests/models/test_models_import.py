"""models.import: HF folders in, safetensors-only artifacts out; pickles and remote code refused."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from slmops.errors import ConfigError, OfflineError, RefError, StoreError, UnsafeInput


def _import(store, path: Path, **cfg):
    from slmops.stage.runner import run_stage

    return run_stage("models.import", None, {"path": str(path), **cfg}, store=store)


def test_import_saved_folder(store, saved_folder: Path, tiny_models, loaded) -> None:
    import torch

    from slmops.models import load_model_and_tokenizer

    (saved_folder / "README.md").write_text("# a model\n")
    (saved_folder / "modeling_evil.py").write_text("raise SystemExit('never run')\n")
    (saved_folder / "training_args.bin").write_bytes(b"\x80\x04not really")
    (saved_folder / ".cache").mkdir()
    (saved_folder / ".cache" / "x.json").write_text("{}")
    res = _import(store, saved_folder)
    art = res.artifact
    assert art.kind == "model" and art.manifest.format == "hf-safetensors"
    names = sorted(p.name for p in art.path.iterdir())
    assert "modeling_evil.py" not in names and "README.md" not in names and "training_args.bin" not in names and ".cache" not in names
    assert not any(n.endswith((".bin", ".pt", ".py")) for n in names)
    assert art.manifest.meta["skipped_files"] == ["README.md", "modeling_evil.py", "training_args.bin"]
    assert art.manifest.meta["model_type"] == "llama"
    assert art.manifest.metrics["parameters"] == tiny_models["llama"].manifest.metrics["parameters"]
    assert art.manifest.meta["tokenizer"]["chat_template"] is True
    model, tok = load_model_and_tokenizer(art)
    ref_model, _ = loaded["llama"]
    ids = tok("Hello there", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, ref_model(**ids).logits)
    # same folder again: cache hit; an edited file: a miss
    assert _import(store, saved_folder).cached
    cfg = json.loads((saved_folder / "tokenizer_config.json").read_text())
    cfg["model_max_length"] = 256
    (saved_folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    edited = _import(store, saved_folder)
    assert not edited.cached and edited.digest != res.digest


def test_pickle_weights_refused_then_converted(store, saved_folder: Path, loaded) -> None:
    import torch

    from slmops.models import load_model_and_tokenizer

    model, _ = loaded["llama"]
    (saved_folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), saved_folder / "pytorch_model.bin")  # tied weights share storage
    with pytest.raises(UnsafeInput, match="pickle") as exc:
        _import(store, saved_folder)
    assert "allow-pickle" in exc.value.message
    art = _import(store, saved_folder, allow_pickle=True).artifact
    names = {p.name for p in art.path.iterdir()}
    assert "model.safetensors" in names and "pytorch_model.bin" not in names
    assert art.manifest.meta["converted_from_pickle"] == ["pytorch_model.bin"]
    converted, tok = load_model_and_tokenizer(art)
    ids = tok("Hello there", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(converted(**ids).logits, model(**ids).logits)


def test_pickles_beside_safetensors_are_skipped(store, saved_folder: Path) -> None:
    (saved_folder / "original").mkdir()
    (saved_folder / "original" / "consolidated.00.pth").write_bytes(b"pickle")
    art = _import(store, saved_folder).artifact
    assert not (art.path / "original").exists()
    assert "original/consolidated.00.pth" in art.manifest.meta["skipped_files"]


def test_remote_code_refused(store, saved_folder: Path) -> None:
    cfg = json.loads((saved_folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (saved_folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsafeInput, match="auto_map") as exc:
        _import(store, saved_folder)
    assert "trust_remote_code" in exc.value.message


def test_remote_code_in_tokenizer_config_refused(store, saved_folder: Path) -> None:
    cfg = json.loads((saved_folder / "tokenizer_config.json").read_text())
    cfg["auto_map"] = {"AutoTokenizer": ["tok.X", None]}
    (saved_folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsafeInput, match="tokenizer_config.json"):
        _import(store, saved_folder)


def test_folder_problems(store, saved_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(RefError, match="no such model folder"):
        _import(store, tmp_path / "nope")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="PEFT adapter"):
        _import(store, adapter)
    (saved_folder / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="no weights"):
        _import(store, saved_folder)


def test_paths_are_contained(store, saved_folder: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.json"
    outside.write_text("{}")
    os.symlink(outside, saved_folder / "linked.json")
    with pytest.raises(UnsafeInput, match="links outside"):
        _import(store, saved_folder)
    (saved_folder / "linked.json").unlink()
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "../../secret.safetensors"}}
    (saved_folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(StoreError, match="escapes"):
        _import(store, saved_folder)


def test_hub_ref_offline_fails_fast(store, monkeypatch: pytest.MonkeyPatch) -> None:
    from slmops.models import hub_download, import_model, importer_for
    from slmops.store import resolve

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(OfflineError) as exc:
        hub_download("org/name")
    assert "slmops models import" in exc.value.message and "HF_HUB_OFFLINE" in exc.value.message
    with pytest.raises(OfflineError):
        import_model("hf:org/name", store=store)
    with pytest.raises(OfflineError):
        resolve("hf:org/name", store, importer=importer_for(store))
    assert time.monotonic() - t0 < 5


def test_hub_unreachable_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    from slmops.models import hub_download

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "SLMOPS_OFFLINE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    t0 = time.monotonic()
    with pytest.raises(OfflineError, match="not reachable"):
        hub_download("org/name")
    assert time.monotonic() - t0 < 10


def test_safetensors_header_facts_without_torch(tiny_models, tmp_path: Path) -> None:
    from slmops.models.weights import read_safetensors_header, weights_summary

    header = read_safetensors_header(tiny_models["phi3"].file("model.safetensors"))
    assert "model.embed_tokens.weight" in header and "lm_head.weight" in header  # phi3: untied
    summary = weights_summary(tiny_models["phi3"].path)
    assert summary["dtypes"] == {"F32": summary["parameters"]}
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(UnsafeInput):
        read_safetensors_header(bad)
    shutil.rmtree(tmp_path)


def test_hf_cache_snapshot_with_blob_symlinks(store, saved_folder: Path, tmp_path: Path) -> None:
    repo = tmp_path / "hub" / "models--org--tiny"
    blobs, snap = repo / "blobs", repo / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in saved_folder.iterdir():
        shutil.copyfile(f, blobs / f.name)
        os.symlink(Path("../../blobs") / f.name, snap / f.name)
    art = _import(store, snap).artifact
    assert not any(p.is_symlink() for p in art.path.iterdir())
    assert art.manifest.meta["model_type"] == "llama"


def test_sharded_pickles_convert_with_their_index(store, saved_folder: Path, loaded) -> None:
    import torch

    from slmops.models import load_model_and_tokenizer

    model, _ = loaded["llama"]
    (saved_folder / "model.safetensors").unlink()
    state = model.state_dict()
    names = sorted(state)
    shards = {f"pytorch_model-0000{i + 1}-of-00002.bin": names[i::2] for i in range(2)}
    for fname, keys in shards.items():
        torch.save({k: state[k] for k in keys}, saved_folder / fname)
    index = {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (saved_folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    art = _import(store, saved_folder, allow_pickle=True).artifact
    files = sorted(p.name for p in art.path.iterdir() if p.name != "manifest.json")
    assert "model-00001-of-00002.safetensors" in files and "model.safetensors.index.json" in files
    assert not any(".bin" in f for f in files)
    converted, tok = load_model_and_tokenizer(art)
    ids = tok("Hello", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(converted(**ids).logits, model(**ids).logits)
