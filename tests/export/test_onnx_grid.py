"""``export.onnx`` on the source grid: a model dequantized from a Q4_0/Q4_1 GGUF exported to int4 without a second rounding.

A tiny Llama is written to a Q4_0 GGUF by ``export.gguf`` (and to Q4_1 by llama.cpp's own
quantizer), imported back with ``models.from_gguf`` and exported to ONNX int4. On the source grid
(the default for such a model) the ONNX logits, computed by onnxruntime-genai, equal the
dequantized fp32 model's torch logits to ~1e-5; the plain requantized export is 100× further off.
The unpacking is checked against the ``gguf`` library's own dequantizer, the option's refusals and
the LoRA-in-float path (the base stays on the grid) on the real components, and the real model
(SmolLM2-135M, a Q4_1 file) goes onto its grid MatMul for MatMul.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np
import pytest

TINY = {"hidden_size": 128, "intermediate_size": 256, "num_heads": 4, "num_layers": 2}
IDS = [1, 17, 250, 33, 1042, 5, 77, 399, 12, 640, 3, 901, 44, 8, 1500, 260]


@pytest.fixture(scope="module")
def tiny128(gstore: Any) -> Any:
    """A tiny Llama whose widths are whole Q4 blocks (``gstore``: the session store of tests/export/conftest.py)."""
    from slmops.testing.tiny import tiny_model

    return tiny_model("llama", store=gstore, **TINY)


def _from_gguf(gguf: Any, store: Any) -> Any:
    from slmops.stage.runner import run_stage

    return run_stage("models.from_gguf", {"model": gguf}, {}, store=store).artifact


@pytest.fixture(scope="module")
def q4_0(gstore: Any, tiny128: Any) -> Any:
    """The tiny Llama through ``export.gguf --qtype q4_0`` and back (``models.from_gguf``)."""
    from slmops.stage.runner import run_stage

    return _from_gguf(run_stage("export.gguf", {"model": tiny128}, {"qtype": "q4_0"}, store=gstore).artifact, gstore)


@pytest.fixture(scope="module")
def untied(gstore: Any) -> Any:
    """An untied tiny Llama through ``export.gguf --qtype q4_0`` and back: its embedding and LM head are tensors of their own."""
    from slmops.stage.runner import run_stage
    from slmops.testing.tiny import tiny_model

    model = tiny_model("llama", store=gstore, tie_word_embeddings=False, **TINY)
    return _from_gguf(run_stage("export.gguf", {"model": model}, {"qtype": "q4_0"}, store=gstore).artifact, gstore)


@pytest.fixture(scope="module")
def q4_1(gstore: Any, tiny128: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The tiny Llama quantized to Q4_1 by llama.cpp (``LLAMA_FTYPE_MOSTLY_Q4_1``; ``export.gguf`` offers no q4_1) and back."""
    from slmops.runtimes.llamacpp_lib import lib
    from slmops.stage.runner import run_stage

    f32 = run_stage("export.gguf", {"model": tiny128}, {"qtype": "f32"}, store=gstore).artifact
    dst = tmp_path_factory.mktemp("q4_1") / "tiny.Q4_1.gguf"
    L = lib()
    params = L.llama_model_quantize_default_params()
    params.ftype = 3
    assert L.llama_model_quantize(str(f32.path / "model.gguf").encode(), str(dst).encode(), ctypes.byref(params)) == 0
    gguf = run_stage("models.import_gguf", {}, {"path": str(dst)}, store=gstore).artifact
    assert gguf.manifest.meta["tensor_types"].get("Q4_1", 0) >= 14
    return _from_gguf(gguf, gstore)


def _export(model: Any, store: Any, **cfg: Any) -> Any:
    from slmops.stage.runner import run_stage

    return run_stage("export.onnx", {"model": model}, {"precision": "int4", "parity_texts": 0, **cfg}, store=store).artifact


def _logit_error(onnx: Any, model: Any) -> float:
    """Largest |ONNX − torch| logit over ``IDS`` (onnxruntime-genai against the fp32 model on torch)."""
    from slmops.runtimes import open_runtime

    with open_runtime(model) as t, open_runtime(onnx) as o:
        ref, got = t.sequence_logits(IDS), o.sequence_logits(IDS)
    assert ref.shape == got.shape and float(np.abs(ref).max()) > 0.1
    return float(np.abs(ref - got).max())


@pytest.mark.parametrize("which", ["q4_0", "q4_1"])
def test_source_grid_reproduces_the_dequantized_model(which: str, request: pytest.FixtureRequest, gstore: Any) -> None:
    model = request.getfixturevalue(which)
    source = _export(model, gstore, accuracy_level=1)  # fp32 activations: only the weights can differ
    q = source.manifest.meta["quantization"]
    assert q["grid"] == "source"
    grid = q["source_grid"]
    assert grid["matmuls"] == grid["total"] == 2 * 5 + 1 and grid["kept_count"] == 0  # qkv (packed), o, gate, up, down per layer + LM head
    assert grid["types"] == {which.upper(): 2 * 5, "Q8_0": 1}  # packed qkv counts once
    plain = _export(model, gstore, accuracy_level=1, weight_grid="requantize")
    assert plain.manifest.meta["quantization"]["grid"] == "requantize"
    exact, requantized = _logit_error(source, model), _logit_error(plain, model)
    assert exact < 1e-4, exact
    assert requantized > 100 * exact and requantized > 1e-3, (requantized, exact)


def test_untied_embedding_goes_onto_its_grid_too(untied: Any, gstore: Any) -> None:
    from slmops.models.gguf_file import open_gguf

    gguf = next(p.digest for p in untied.manifest.parents if p.role == "model")
    types = {t.name: t.tensor_type.name for t in open_gguf(gstore.get(gguf).path / "model.gguf").tensors}
    assert (types["token_embd.weight"], types["output.weight"]) == ("Q4_0", "Q8_0")  # what llama.cpp writes for this shape
    art = _export(untied, gstore, accuracy_level=1)
    q = art.manifest.meta["quantization"]
    assert q["source_grid"]["embedding"] == "Q4_0" and q["embedding"] == "int4"  # a 4-bit GatherBlockQuantized, default zero point 8
    assert q["source_grid"]["matmuls"] == q["source_grid"]["total"] == 2 * 5 + 1
    assert _logit_error(art, untied) < 1e-4


def test_q4_1_offsets_are_a_float_branch_beside_the_int4_matmul(q4_1: Any, gstore: Any) -> None:
    import onnx
    from onnx import numpy_helper

    art = _export(q4_1, gstore, accuracy_level=1)
    assert art.manifest.meta["quantization"]["source_grid"]["offsets"] == 2 * 5  # packed qkv, o, gate, up, down: Q4_1; head: Q8_0
    graph = onnx.load(str(art.path / "model.onnx")).graph
    inits = {t.name: t for t in graph.initializer}
    node = next(n for n in graph.node if n.name.startswith("/model/layers.1/mlp/down_proj/MatMul"))
    attrs = {a.name: a.i for a in node.attribute}
    assert (node.op_type, attrs["bits"], attrs["block_size"], attrs["K"]) == ("MatMulNBits", 4, 32, 256)
    assert inits[node.input[3]].data_type == onnx.TensorProto.UINT8 and not numpy_helper.to_array(inits[node.input[3]]).any()  # zero point 0
    offsets = inits[f"{node.input[1]}_offsets"]
    assert offsets.data_type == onnx.TensorProto.FLOAT16 and list(offsets.dims) == [256 // 32, 128]
    add = next(n for n in graph.node if node.output[0] in n.input and n.op_type == "Add")
    assert add.name.endswith("/grid_offsets/Add")
    head = next(n for n in graph.node if n.name.startswith("/lm_head/"))
    assert len(head.input) == 3 and {a.name: a.i for a in head.attribute}["bits"] == 8  # Q8_0: the default zero point 128
    sums = [n for n in graph.node if n.name.endswith("/grid_offsets/BlockSum")]
    assert len(sums) == 2 * 4  # one per distinct input of a layer: attention input, attention output, MLP input (gate, up), MLP product


def test_grid_matmuls_default_to_fp32_activations(q4_1: Any, gstore: Any) -> None:
    """With no --accuracy-level, 4-bit MatMuls on the grid get level 1 (exact); the 8-bit head keeps the CPU default 4 (fast)."""
    import onnx

    art = _export(q4_1, gstore)
    assert art.manifest.meta["quantization"]["source_grid"]["accuracy_level"] == 1
    graph = onnx.load(str(art.path / "model.onnx"), load_external_data=False).graph
    levels = {n.name: {a.name: a.i for a in n.attribute} for n in graph.node if n.op_type == "MatMulNBits"}
    assert {v["accuracy_level"] for k, v in levels.items() if v["bits"] == 4} == {1}
    assert levels["/lm_head/MatMul_Q8"]["accuracy_level"] == 4 and levels["/lm_head/MatMul_Q8"]["bits"] == 8


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
def test_unpacked_blocks_dequantize_like_the_gguf_library(qtype: str) -> None:
    import gguf

    from slmops.export.onnx_grid import _unpack

    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 96)).astype(np.float32)
    w[1, :32] = 0.0  # a block with d == 0 (every weight equal)
    w[2, 32:64] = 0.25
    t = getattr(gguf.GGMLQuantizationType, qtype)
    raw = gguf.quants.quantize(w, t)
    want = gguf.quants.dequantize(raw, t).reshape(w.shape)
    grid = _unpack(raw, qtype, w.shape[0])
    assert grid.codes.shape == (6, 3, 32) and grid.codes.max() <= (15 if qtype != "Q8_0" else 255)
    np.testing.assert_allclose(grid.dequantize(), want, rtol=0, atol=2e-7 * float(np.abs(want).max()))


def test_a_weight_changed_after_import_keeps_the_plans_grid(q4_0: Any, gstore: Any, tmp_path: Path) -> None:
    """The grid is checked against the model's own weights: a folder edited after import is not silently reverted to the GGUF."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from slmops.export.onnx import OnnxExportConfig, export_onnx
    from slmops.export.onnx_grid import source_gguf

    src = tmp_path / "edited"
    shutil.copytree(q4_0.path, src, ignore=shutil.ignore_patterns("manifest.json"))
    weights = load_file(str(src / "model.safetensors"))
    weights["model.layers.1.self_attn.o_proj.weight"] = weights["model.layers.1.self_attn.o_proj.weight"] * 1.01
    save_file(weights, str(src / "model.safetensors"))
    out = tmp_path / "onnx"
    out.mkdir()
    facts = export_onnx(src, out, OnnxExportConfig(precision="int4", parity_texts=0), source_grid=source_gguf(q4_0, gstore))
    grid = facts["quantization"]["source_grid"]
    (node, why), = grid["kept"].items()
    assert grid["matmuls"] == grid["total"] - 1 and node.startswith("/model/layers.1/attn/o_proj/MatMul") and "differ from the GGUF's" in why


def test_lora_in_float_keeps_the_base_on_the_grid(q4_0: Any, gstore: Any) -> None:
    from slmops.stage.runner import run_stage
    from slmops.testing.onnx import tiny_lora

    adapter = tiny_lora(q4_0, store=gstore, arch="llama")
    inputs = {"model": q4_0, "adapter": adapter}
    cfg = {"precision": "int4", "accuracy_level": 1, "parity_texts": 4}
    float_ = run_stage("export.onnx", inputs, {**cfg, "adapter_mode": "float"}, store=gstore).artifact
    merged = run_stage("export.onnx", inputs, cfg, store=gstore).artifact
    qf, qm = float_.manifest.meta["quantization"], merged.manifest.meta["quantization"]
    assert qf["grid"] == "source" and qf["source_grid"]["matmuls"] == qf["source_grid"]["total"]
    assert qm["grid"] == "requantize"  # merged weights are off the grid: auto requantizes
    # both are scored against the fp32 merged model: the float LoRA on the exact base is far closer
    assert float_.manifest.metrics["kl_mean"] < 1e-4 < merged.manifest.metrics["kl_mean"]


def test_explicit_source_grid_refuses_what_it_cannot_keep(tiny128: Any, q4_0: Any, gstore: Any) -> None:
    from pydantic import ValidationError

    from slmops.errors import ConfigError
    from slmops.export.onnx import OnnxExportConfig
    from slmops.stage.runner import run_stage
    from slmops.testing.onnx import tiny_lora

    with pytest.raises(ConfigError, match="no GGUF grid to keep") as exc:
        _export(tiny128, gstore, weight_grid="source")
    assert "models.from_gguf" in str(exc.value.why)
    adapter = tiny_lora(q4_0, store=gstore, arch="llama", seed=1)
    with pytest.raises(ConfigError, match="adapter merged in") as exc:
        run_stage("export.onnx", {"model": q4_0, "adapter": adapter}, {"precision": "int4", "weight_grid": "source"}, store=gstore)
    assert "--adapter-mode float" in str(exc.value.fix)
    with pytest.raises(ValidationError, match="weight_grid only apply to precision int4 or int8"):
        OnnxExportConfig(precision="fp16", weight_grid="source")
    assert _export(tiny128, gstore).manifest.meta["quantization"]["grid"] == "requantize"  # auto on a model of no GGUF


@pytest.mark.slow
def test_real_model_goes_onto_its_q4_1_grid(smollm2_hf: Any, smollm2_store: Any, smollm2_torch: Any) -> None:
    """SmolLM2-135M (Q4_1, a Q8_0 tied embedding): all 211 MatMuls on the GGUF's grid, logits as the fp32 model's."""
    from slmops.runtimes import open_runtime

    art = _export(smollm2_hf, smollm2_store, quant_algo="default", accuracy_level=1)
    grid = art.manifest.meta["quantization"]["source_grid"]
    assert grid["matmuls"] == grid["total"] == 30 * 5 + 1 and grid["types"] == {"Q4_1": 150, "Q8_0": 1}
    ids = smollm2_torch.encode_prompt("The capital of France is Paris, and the capital of Italy is")
    with open_runtime(art) as o:
        got = o.sequence_logits(ids)
    ref = smollm2_torch.sequence_logits(ids)
    assert float(np.abs(ref - got).max()) < 1e-3 * float(np.abs(ref).max())
    assert Path(art.path / "model.onnx.data").stat().st_size < 0.35 * 4 * smollm2_hf.manifest.metrics["parameters"]


def test_cli_weight_grid(cli: Any) -> None:
    """``slmops export onnx --weight-grid``: source by default on a model imported from a Q4_0 GGUF, named in the hints."""
    for args in (("models", "init", "--name", "tiny", "--arch", "llama"), ("export", "gguf", "tiny", "--qtype", "q4_0", "--name", "tiny-q4"),
                 ("models", "import", "tiny-q4", "--to", "hf", "--name", "tiny-back")):
        res = cli(*args, "--json")
        assert res.code == 0, res.err
    res = cli("export", "onnx", "tiny-back", "--parity-texts", "0", "--json")
    assert res.code == 0, res.err
    grid = res.json["meta"]["quantization"]["source_grid"]
    assert grid["matmuls"] == grid["total"] and any(f"{grid['matmuls']} of {grid['total']} MatMuls written on the grid" in h for h in res.json["hints"])
    res = cli("export", "onnx", "tiny-back", "--parity-texts", "0", "--weight-grid", "requantize", "--json")
    assert res.code == 0 and res.json["meta"]["quantization"]["grid"] == "requantize" and "source_grid" not in res.json["meta"]["quantization"]
    bad = cli("export", "onnx", "tiny", "--weight-grid", "source")
    assert bad.code == 1 and "has no GGUF grid to keep" in bad.err
    bad = cli("export", "onnx", "tiny", "--precision", "fp16", "--weight-grid", "source")
    assert bad.code == 1 and "--weight-grid only apply to --precision int4 or int8" in bad.err
