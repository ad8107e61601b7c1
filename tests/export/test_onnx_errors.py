"""``export.onnx`` refuses what it cannot export, and a failure at any point leaves no artifact behind.

Unsupported architecture, missing tokenizer and a disk too small are refused before the builder
runs; a full disk, a builder crash or an interruption (Ctrl-C) in the middle of writing leave no
artifact and no staging directory.
"""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="module")
def estore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from slmops.store.registry import Store

    s = Store(tmp_path_factory.mktemp("onnx_err_store"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def llama(estore: Any) -> Any:
    from slmops.testing.tiny import tiny_model

    return tiny_model("llama", store=estore)


def _variant(store: Any, model: Any, edit: Any) -> Any:
    """A model artifact made from ``model``'s files, changed by ``edit(folder)``."""
    with store.staging() as tmp:
        for f in model.path.iterdir():
            if f.name != "manifest.json":
                shutil.copy2(f, tmp / f.name)
        edit(tmp)
        return store.commit(tmp, kind="model", format="hf-safetensors")


def _nothing_left(store: Any) -> None:
    assert store.artifacts_list(kind="onnx", named_only=False) == []
    assert [p for p in store.tmp.iterdir() if not p.name.startswith("trash-")] == []


def test_unsupported_architecture(estore: Any, llama: Any) -> None:
    from slmops.errors import ConfigError
    from slmops.stage.runner import run_stage

    def gpt2(folder: Path) -> None:
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))

    bad = _variant(estore, llama, gpt2)
    with pytest.raises(ConfigError, match="does not support the GPT2LMHeadModel architecture") as exc:
        run_stage("export.onnx", {"model": bad}, {"precision": "int4"}, store=estore)
    assert "LlamaForCausalLM" in exc.value.message and "export gguf" in exc.value.message
    _nothing_left(estore)


def test_missing_tokenizer(estore: Any, llama: Any) -> None:
    from slmops.errors import ConfigError
    from slmops.stage.runner import run_stage

    def drop(folder: Path) -> None:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (folder / name).unlink(missing_ok=True)

    bad = _variant(estore, llama, drop)
    with pytest.raises(ConfigError, match="has no tokenizer") as exc:
        run_stage("export.onnx", {"model": bad}, {}, store=estore)
    assert "tokenizer.json" in exc.value.message and "save_pretrained" in exc.value.message
    _nothing_left(estore)


def test_not_a_model(estore: Any) -> None:
    from slmops.errors import ConfigError
    from slmops.stage.runner import run_stage
    from slmops.testing.tiny import text_dataset

    data = text_dataset(["a", "b"], store=estore)
    with pytest.raises(ConfigError, match="not a model"):
        run_stage("export.onnx", {"model": data}, {}, store=estore)


def test_disk_too_small_is_refused_up_front(estore: Any, llama: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import slmops.export.onnx as onnx_mod
    from slmops.stage.runner import run_stage

    called = []
    monkeypatch.setattr(onnx_mod.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 1 << 20))  # type: ignore[attr-defined]
    monkeypatch.setattr(onnx_mod, "_create_model", lambda *a, **k: called.append(a))
    with pytest.raises(onnx_mod.ExportError, match="not enough disk space") as exc:
        run_stage("export.onnx", {"model": llama}, {"precision": "fp32"}, store=estore)
    assert "--home" in exc.value.message and not called
    _nothing_left(estore)


def _half_write(out: Path) -> None:
    (out / "model.onnx").write_bytes(b"partial")
    (out / "model.onnx.data").write_bytes(b"\0" * 1024)


@pytest.mark.parametrize(("raised", "error", "match"), [
    (OSError(errno.ENOSPC, "No space left on device"), "ExportError", "ran out of disk space"),
    (ValueError("unexpected tensor shape"), "ExportError", "model builder failed"),
    (KeyboardInterrupt(), "KeyboardInterrupt", None),
])
def test_failure_mid_export_leaves_no_artifact(estore: Any, llama: Any, monkeypatch: pytest.MonkeyPatch, raised: BaseException,
                                               error: str, match: str | None) -> None:
    import slmops.export.onnx as onnx_mod
    from slmops.stage.runner import run_stage

    def crash(src: Path, out: Path, *args: Any) -> None:
        _half_write(out)
        raise raised

    monkeypatch.setattr(onnx_mod, "_create_model", crash)
    with pytest.raises(BaseException) as exc:
        run_stage("export.onnx", {"model": llama}, {"precision": "int4", "parity_texts": 0}, store=estore)
    assert type(exc.value).__name__ == error
    if match:
        assert match in exc.value.message  # type: ignore[attr-defined]
    _nothing_left(estore)


def test_builder_output_incomplete(estore: Any, llama: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import slmops.export.onnx as onnx_mod
    from slmops.stage.runner import run_stage

    monkeypatch.setattr(onnx_mod, "_create_model", lambda src, out, *a: (out / "model.onnx").write_bytes(b"x"))
    with pytest.raises(onnx_mod.ExportError, match="wrote no genai_config.json"):
        run_stage("export.onnx", {"model": llama}, {"precision": "int4", "parity_texts": 0}, store=estore)
    _nothing_left(estore)


def test_config_errors_name_the_field(estore: Any, llama: Any) -> None:
    from slmops.errors import ConfigError
    from slmops.stage.runner import run_stage

    with pytest.raises(ConfigError, match="block_size"):
        run_stage("export.onnx", {"model": llama}, {"precision": "fp32", "block_size": 32}, store=estore)
    with pytest.raises(ConfigError, match="precision"):
        run_stage("export.onnx", {"model": llama}, {"precision": "int3"}, store=estore)
    with pytest.raises(ConfigError, match="unknown field"):
        run_stage("export.onnx", {"model": llama}, {"bits": 4}, store=estore)


def test_int4_plan_works_around_the_builder_limits() -> None:
    """Block size, rounding and mixed precision are settled before the builder runs (no graph that does not load)."""
    from slmops.errors import ConfigError
    from slmops.export.onnx import OnnxExportConfig
    from slmops.export.onnx_quant import plan_quantization

    def plan(model: dict[str, Any], *, tied: bool = True, adapter: bool = False, **cfg: Any) -> dict[str, Any]:
        return plan_quantization(OnnxExportConfig(**cfg), model, tied=tied, runtime_adapter=adapter)

    big = {"hidden_size": 768, "intermediate_size": 2048, "num_attention_heads": 12}
    assert plan(big) == {"algo": "k_quant", "block_size": 128, "symmetric": True, "mixed_precision": "first_last", "embedding": "tied"}
    # untied: the builder's default rounding can mix precisions there, and the embedding is made int8 after it ran
    assert plan(big, tied=False) == {"algo": "default", "block_size": 128, "symmetric": True, "mixed_precision": "first_last", "embedding": "int8"}
    assert plan(big, tied=False, mixed_precision="none")["embedding"] == "int4"
    assert plan(big, tied=False, quantize_embeddings=False)["embedding"] == "float"
    assert plan(big, adapter=True)["mixed_precision"] == "last" == plan(big, execution_provider="dml")["mixed_precision"]
    # int8: a tied embedding reads the int8 LM head (no float copy); an untied one stays float
    assert plan(big, precision="int8") == {"algo": "default", "block_size": 64, "symmetric": True, "mixed_precision": "none", "embedding": "tied"}
    assert plan(big, precision="int8", tied=False)["embedding"] == "float"
    assert plan(big, precision="fp16") == {}
    # 896 = 7 blocks of 128: k_quant packs zero points in pairs, so the default block drops to 64; an explicit 128 rounds with
    # symmetric rtn (no zero points) instead, and with an explicit k_quant it is refused
    qwen = {"hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14}
    assert plan(qwen) == {"algo": "k_quant", "block_size": 64, "symmetric": True, "mixed_precision": "first_last", "embedding": "tied"}
    assert plan(qwen, block_size=128) == {"algo": "rtn", "block_size": 128, "symmetric": True, "mixed_precision": "first_last", "embedding": "tied"}
    with pytest.raises(ConfigError, match="odd number of 128-weight blocks"):
        plan(qwen, block_size=128, quant_algo="k_quant")
    with pytest.raises(ConfigError, match="odd number of 128-weight blocks"):
        plan(qwen, block_size=128, symmetric=False)
    assert plan({"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4})["block_size"] == 32  # ≤ hidden, even count
    # a tied embedding is tied after the builder ran (onnx_embedding.tied_embedding), so every rounding can mix precisions with it
    assert plan(big, quant_algo="default", mixed_precision="last")["mixed_precision"] == "last"
    assert plan(big, quant_algo="default", symmetric=False)["embedding"] == "tied"
    assert plan(big, quant_algo="default")["mixed_precision"] == "first_last"
    assert plan(big, tied=False, quant_algo="default", mixed_precision="last")["mixed_precision"] == "last"
    with pytest.raises(ValueError, match="mixed_precision"):
        OnnxExportConfig(precision="int8", mixed_precision="first_last")
