"""LoRA adapters through ``export.onnx``: merged before export, or exported as switchable ORT GenAI adapters.

Merged exports must give the PEFT model's logits; run-time exports must give the base model's
logits with no adapter active and the PEFT model's with it, switch per request, and accept other
PEFT adapters of the same base converted on load. Adapters that cannot work are refused clearly.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

IDS = [1, 20, 33, 47, 52, 68, 71, 90, 120]


@pytest.fixture(scope="module")
def astore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from slmops.store.registry import Store

    s = Store(tmp_path_factory.mktemp("onnx_adapter_store"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def setup(astore: Any) -> dict[str, Any]:
    """arch -> (model, adapter, second adapter or None) for llama and phi3 (fused qkv/gate_up)."""
    from slmops.testing.onnx import tiny_lora
    from slmops.testing.tiny import tiny_model

    out = {}
    for arch in ("llama", "phi3"):
        model = tiny_model(arch, store=astore)
        other = tiny_lora(model, store=astore, seed=1, rank=8) if arch == "llama" else None
        out[arch] = (model, tiny_lora(model, store=astore, seed=0), other)
    return out


def _peft_logits(model: Any, adapter: Any | None) -> np.ndarray:
    import peft
    import torch

    from slmops.models.loading import load_model_and_tokenizer

    base, _ = load_model_and_tokenizer(model)
    net = peft.PeftModel.from_pretrained(base, str(adapter.path)) if adapter is not None else base
    with torch.no_grad():
        return net.eval()(torch.tensor([IDS])).logits[0].numpy()


def test_merge_then_export_matches_peft(astore: Any, setup: dict[str, Any]) -> None:
    from slmops.runtimes import open_runtime
    from slmops.stage.runner import run_stage

    model, adapter, _ = setup["phi3"]
    r = run_stage("export.onnx", {"model": model, "adapter": adapter}, {"precision": "fp32", "parity_texts": 2}, store=astore)
    m = r.artifact.manifest
    assert {(p.role, p.digest) for p in m.parents} == {("model", model.digest), ("adapter", adapter.digest)}
    assert m.meta["adapter"] == {"digest": adapter.digest, "mode": "merge"} and m.metrics["kl_mean"] < 1e-9
    assert not (r.artifact.path / "adapters").exists()
    with open_runtime(r.artifact) as rt:
        got = rt.sequence_logits(IDS)
    want, base = _peft_logits(model, adapter), _peft_logits(model, None)
    assert np.abs(want - base).max() > 0.05  # the adapter does something
    assert np.abs(got - want).max() < 1e-4


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_runtime_adapter_switches_per_request(astore: Any, setup: dict[str, Any], arch: str) -> None:
    from slmops.runtimes import GenerationParams, open_runtime
    from slmops.stage.runner import run_stage

    model, adapter, other = setup[arch]
    cfg = {"precision": "fp32", "adapter_mode": "runtime", "adapter_name": "tuned", "parity_texts": 2 if arch == "llama" else 0}
    art = run_stage("export.onnx", {"model": model, "adapter": adapter}, cfg, store=astore).artifact
    assert art.manifest.meta["adapters"] == {"tuned": "adapters/tuned.onnx_adapter"}
    if arch == "llama":
        assert art.manifest.metrics["kl_mean"] < 1e-9  # measured with the adapter active
    base, tuned = _peft_logits(model, None), _peft_logits(model, adapter)
    with open_runtime(art) as rt:
        assert rt.adapters == ("tuned",) and rt.capabilities.adapters
        assert np.abs(rt.sequence_logits(IDS) - base).max() < 1e-4
        assert np.abs(rt.sequence_logits(IDS, adapter="tuned") - tuned).max() < 1e-4
        assert np.abs(rt.sequence_logits(IDS) - base).max() < 1e-4  # and back
        params = GenerationParams(max_tokens=6)
        a = rt.generate(IDS, params, adapter="tuned")
        assert a.token_ids == [int(np.argmax(tuned[-1]))] + a.token_ids[1:]
        if other is None:
            return
        rt.load_adapter("other", other.path)  # a PEFT folder of another rank, converted on load
        assert np.abs(rt.sequence_logits(IDS, adapter="other") - _peft_logits(model, other)).max() < 1e-4
        assert rt.unload_adapter("other") and not rt.unload_adapter("other")
        with pytest.raises(Exception, match="no adapter named"):
            rt.generate(IDS, params, adapter="other")


def test_runtime_adapter_survives_int4(astore: Any, setup: dict[str, Any]) -> None:
    """int4 quantizes the base MatMuls but keeps the LoRA branches in float, so adapters stay switchable."""
    from slmops.runtimes import open_runtime
    from slmops.stage.runner import run_stage

    model, adapter, _ = setup["llama"]
    cfg = {"precision": "int4", "adapter_mode": "runtime", "parity_texts": 0}
    art = run_stage("export.onnx", {"model": model, "adapter": adapter}, cfg, store=astore).artifact
    base, tuned = _peft_logits(model, None), _peft_logits(model, adapter)
    with open_runtime(art) as rt:
        off, on = rt.sequence_logits(IDS), rt.sequence_logits(IDS, adapter="default")
    assert np.abs(off - base).max() < 0.5 and np.abs(on - tuned).max() < 0.5
    assert np.abs((on - off) - (tuned - base)).mean() < 0.05  # the adapter's effect is carried over


def test_int4_can_keep_a_lora_in_float(astore: Any, setup: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    """adapter_mode float keeps a LoRA as float branches beside the int4 base: always on, closer than merged on this model."""
    import logging

    import onnx

    from slmops.runtimes import GenerationParams, open_runtime
    from slmops.stage.runner import run_stage

    model, adapter, _ = setup["llama"]
    with caplog.at_level(logging.WARNING):
        flt = run_stage("export.onnx", {"model": model, "adapter": adapter}, {"precision": "int4", "adapter_mode": "float", "parity_texts": 0},
                        store=astore).artifact
    merged = run_stage("export.onnx", {"model": model, "adapter": adapter}, {"precision": "int4", "parity_texts": 0}, store=astore).artifact
    assert flt.manifest.meta["adapter"]["mode"] == "float" and merged.manifest.meta["adapter"]["mode"] == "merge"
    assert not (flt.path / "adapters").exists() and "is invalid" not in caplog.text
    graph = onnx.load(str(flt.path / "model.onnx"), load_external_data=False).graph
    lora = [n for n in graph.node if "/lora_" in n.name]
    assert lora and all(n.op_type == "MatMul" for n in lora)  # float branches, not MatMulNBits
    assert not any("lora" in i.name for i in graph.input)  # constants, not switchable inputs
    tuned = _peft_logits(model, adapter)
    with open_runtime(flt) as rf, open_runtime(merged) as rm:
        assert not rf.adapters
        err_float, err_merged = np.abs(rf.sequence_logits(IDS) - tuned).mean(), np.abs(rm.sequence_logits(IDS) - tuned).mean()
        assert rf.generate("The fox", GenerationParams(max_tokens=4)).completion_tokens == 4
    assert err_float < err_merged  # rounding the merged weights to 4 bits loses part of the LoRA's change


def test_unusable_adapters_are_refused(astore: Any, setup: dict[str, Any], tmp_path: Any) -> None:
    from slmops.errors import ConfigError
    from slmops.stage.runner import run_stage
    from slmops.store.artifact import Parent
    from slmops.testing.tiny import tiny_model

    model, adapter, _ = setup["llama"]
    before = len(astore.artifacts_list(kind="onnx", named_only=False))
    with pytest.raises(ConfigError, match="needs an adapter"):
        run_stage("export.onnx", {"model": model}, {"adapter_mode": "runtime"}, store=astore)
    other_base = tiny_model("llama", store=astore, seed=3)
    with pytest.raises(ConfigError, match="trained on another base model"):
        run_stage("export.onnx", {"model": other_base, "adapter": adapter}, {"precision": "fp32"}, store=astore)
    cfg = json.loads((adapter.path / "adapter_config.json").read_text())
    dst = tmp_path / "dora"
    shutil.copytree(adapter.path, dst, ignore=shutil.ignore_patterns("manifest.json"))
    (dst / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with astore.staging() as tmp:
        for f in dst.iterdir():
            shutil.copy2(f, tmp / f.name)
        dora = astore.commit(tmp, kind="adapter", format="peft", parents=[Parent(digest=model.digest, role="model")])
    with pytest.raises(ConfigError, match="DoRA") as exc:
        run_stage("export.onnx", {"model": model, "adapter": dora}, {"adapter_mode": "runtime"}, store=astore)
    assert "--adapter-mode merge" in exc.value.message
    assert len(astore.artifacts_list(kind="onnx", named_only=False)) == before
