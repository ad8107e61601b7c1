"""Bad inputs give clear errors and leave no artifact: unsupported models, missing or corrupt files, full disks, Ctrl-C.

The readers are fuzzed with generated damaged files: config.json, tokenizer.json, tokenizer.model,
safetensors weights, adapter files and GGUF files (truncated, bytes flipped, random garbage).
"""

from __future__ import annotations

import errno
import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from slmops.errors import ConfigError, DataError, SlmopsError, StoreError, UnsafeInput
from slmops.runtimes import open_runtime
from slmops.stage.runner import run_stage


def commit_model(store: Any, folder: Path, kind: str = "model") -> Any:
    with store.staging() as tmp:
        for f in folder.iterdir():
            shutil.copy2(f, tmp / f.name)
        return store.commit(tmp, kind=kind, format="hf-safetensors")


def assert_nothing_left(store: Any) -> None:
    assert store.artifacts_list(kind="gguf", named_only=False) == []
    assert list(store.tmp.iterdir()) == []  # no half-written temp dir either


def export_fails(store: Any, folder: Path, exc: type[BaseException], match: str | None, **cfg: Any) -> Any:
    model = commit_model(store, folder)
    with pytest.raises(exc, match=match) as info:
        run_stage("export.gguf", {"model": model}, {"qtype": "f32", **cfg}, store=store)
    assert_nothing_left(store)
    return info.value


def test_unsupported_architecture(store: Any, hf_copy: Any) -> None:
    folder = hf_copy()
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")
    (folder / "config.json").write_text(json.dumps(cfg))
    err = export_fails(store, folder, ConfigError, "cannot export GPT2LMHeadModel to GGUF")
    assert "supports" in (err.why or "") and "onnx" in (err.fix or "").lower()


def test_missing_tokenizer(store: Any, hf_copy: Any) -> None:
    folder = hf_copy()
    (folder / "tokenizer.json").unlink()
    err = export_fails(store, folder, ConfigError, "has no tokenizer")
    assert "tokenizer.save_pretrained" in (err.fix or "")


def test_unsupported_rope_scaling(store: Any, hf_copy: Any) -> None:
    folder = hf_copy()
    cfg = json.loads((folder / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
    (folder / "config.json").write_text(json.dumps(cfg))
    export_fails(store, folder, ConfigError, "rope scaling 'dynamic' is not supported")


def test_missing_weights_tensor(store: Any, hf_copy: Any) -> None:
    from safetensors.torch import load_file, save_file

    folder = hf_copy()
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    export_fails(store, folder, DataError, "lack 1 tensor.*blk.1.ffn_down.weight")


def test_a_non_model_input_is_refused(store: Any, dataset: Any, gstore: Any, f32: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="is a gguf, not a model"):
        run_stage("export.gguf", {"model": f32["llama"]}, {"qtype": "f32"}, store=gstore)
    with pytest.raises(ConfigError, match="invalid config"):
        run_stage("export.gguf", {"model": f32["llama"]}, {"qtype": "q3"}, store=gstore)


def test_unknown_pre_tokenizer_names_the_flag(store: Any, hf_copy: Any) -> None:
    folder = hf_copy()
    tj = json.loads((folder / "tokenizer.json").read_text())
    tj["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|\s+|."
    (folder / "tokenizer.json").write_text(json.dumps(tj))
    err = export_fails(store, folder, ConfigError, "pre-tokenizer .* is not one slmops recognises")
    assert "--pre-tokenizer" in (err.fix or "")


def test_disk_full_leaves_nothing(store: Any, hf_copy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import gguf

    calls = {"n": 0}
    real = gguf.GGUFWriter.write_tensor_data

    def full(self: Any, tensor: Any, *a: Any, **k: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, tensor, *a, **k)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", full)
    err = export_fails(store, hf_copy(), StoreError, "no space left on the disk")
    assert "SLMOPS_HOME" in (err.fix or "")


def test_interrupted_export_leaves_nothing(store: Any, hf_copy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import gguf

    def interrupt(self: Any, tensor: Any, *a: Any, **k: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", interrupt)
    export_fails(store, hf_copy(), KeyboardInterrupt, None)


def test_failed_quantization_leaves_nothing(store: Any, hf_copy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from slmops.runtimes import llamacpp_lib

    L = llamacpp_lib.lib()
    monkeypatch.setattr(L, "llama_model_quantize", lambda *a: 1)
    export_fails(store, hf_copy(), ConfigError, "llama.cpp could not quantize", qtype="q8_0")


# -- fuzzing the readers -----------------------------------------------------------------------------


def _damage(data: bytes, rng: random.Random, mode: int) -> bytes:
    if mode == 0:
        return data[: rng.randrange(0, max(1, len(data)))]
    if mode == 1:
        b = bytearray(data)
        for _ in range(rng.randrange(1, 6)):
            b[rng.randrange(0, min(len(b), 4096))] = rng.randrange(256)
        return bytes(b)
    if mode == 2:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 2048)))
    return data[: len(data) // 3] + b"\x00" * 64


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"])
def test_fuzzed_model_files_give_clear_errors(store: Any, hf_copy: Any, name: str) -> None:
    from slmops.export.gguf_convert import convert_to_gguf

    clean = hf_copy()
    rng = random.Random(name)
    original = (clean / name).read_bytes()
    for i in range(12):
        (clean / name).write_bytes(_damage(original, rng, i % 4))
        out = clean / "out.gguf"
        try:
            convert_to_gguf(clean, out)
        except SlmopsError as exc:
            assert exc.what and not out.exists() and not out.with_name("out.gguf.partial").exists()
        else:  # a flipped byte inside a value can leave a valid file: then the GGUF must load
            with open_runtime(out, n_ctx=64) as rt:
                assert rt.vocab_size > 0
            out.unlink()


def test_fuzzed_gguf_files_give_clear_errors(f32: dict[str, Any], tmp_path: Path) -> None:
    data = (f32["llama"].path / "model.gguf").read_bytes()
    rng = random.Random(7)
    outcomes = {"error": 0, "loaded": 0}
    for i in range(24):
        bad = tmp_path / f"bad{i}.gguf"
        mode = i % 4
        damaged = _damage(data, rng, mode) if mode != 1 else bytearray(data)
        if mode == 1:  # flip bytes anywhere in the header and tensor table, not only the first 4 KiB
            for _ in range(4):
                damaged[rng.randrange(0, 60000)] = rng.randrange(256)
        bad.write_bytes(bytes(damaged if mode != 2 else b"GGUF" + damaged))
        try:
            with open_runtime(bad, n_ctx=64) as rt:
                rt.generate([1, 2, 3])
            outcomes["loaded"] += 1
        except (DataError, ConfigError) as exc:
            assert exc.what and exc.fix
            outcomes["error"] += 1
    assert outcomes["error"] >= 15


def test_not_a_gguf_and_adapter_as_model(tmp_path: Path, lora: Any, gstore: Any, tiny: dict[str, Any]) -> None:
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\x03\x04 not a gguf at all")
    with pytest.raises(DataError, match="is not a GGUF file"):
        open_runtime(p)
    art = run_stage("export.gguf_lora", {"adapter": lora[1], "model": tiny["llama"]}, {}, store=gstore).artifact
    with pytest.raises(ConfigError, match="is a LoRA adapter, not a model"):
        open_runtime(art.path / "adapter.gguf")


def test_fuzzed_adapter_files(tmp_path: Path, lora: Any, tiny: dict[str, Any]) -> None:
    from slmops.models.gguf_lora import convert_lora

    src = lora[1].path
    rng = random.Random(3)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        folder = tmp_path / f"a-{name}"
        shutil.copytree(src, folder, ignore=shutil.ignore_patterns("manifest.json"))
        original = (folder / name).read_bytes()
        for i in range(8):
            (folder / name).write_bytes(_damage(original, rng, i % 4))
            try:
                convert_lora(folder, tiny["llama"].path, tmp_path / "a.gguf")
            except SlmopsError as exc:
                assert exc.what
    pickled = tmp_path / "pickled"
    shutil.copytree(src, pickled, ignore=shutil.ignore_patterns("manifest.json", "*.safetensors"))
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(UnsafeInput, match="pickled adapter"):
        convert_lora(pickled, tiny["llama"].path, tmp_path / "p.gguf")
