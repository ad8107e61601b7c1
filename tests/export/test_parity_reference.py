"""Parity's reference is the exact fp32 model an export was made from — adapter included — and its default gates.

An export of base + LoRA (kept as a GGUF LoRA, or merged) must be compared with the base *with that
adapter applied*: against it the f32 export agrees to rounding, while against the bare base it is
far off (what users saw as "greedy match 0, KL 1.2" on a real model). The default gates are about
task score, top-1 and greedy agreement with a KL limit measured on a real 4-bit model; a gate whose
metric the data cannot measure is reported as skipped, not failed.
"""

from __future__ import annotations

from typing import Any

import pytest

from slmops.export.parity import DEFAULT_GATES, ParityConfig, check_parity
from slmops.export.stages_eval import parity_reference
from slmops.stage.runner import run_stage


@pytest.mark.parametrize("merge", [False, True], ids=["gguf-lora", "merged"])
def test_parity_of_an_adapter_export_is_against_the_adapted_model(gstore: Any, tiny: dict[str, Any], lora: tuple[Any, Any],
                                                                  dataset: Any, merge: bool) -> None:
    _, adapter = lora
    cfg = {"qtype": "f32", **({"merge_adapter": True} if merge else {})}
    exp = run_stage("export.gguf", {"model": tiny["llama"], "adapter": adapter}, cfg, store=gstore).artifact
    ref = parity_reference(exp, gstore)
    assert ref.digest == adapter.digest, "the reference is the adapter (opened on its base), not the bare base"
    pcfg = {"max_texts": 6, "greedy_prompts": 4}
    right = run_stage("parity", {"candidate": exp, "reference": ref, "data": dataset}, pcfg, store=gstore).artifact.manifest.metrics
    wrong = run_stage("parity", {"candidate": exp, "reference": tiny["llama"], "data": dataset}, pcfg, store=gstore).artifact.manifest.metrics
    assert right["kl_mean"] < 1e-4 and right["top1_agreement"] == 1.0 and right["greedy_match"] == 1.0 and right["passed"]
    assert wrong["kl_mean"] > 100 * max(right["kl_mean"], 1e-6), "the bare base is visibly another model"


def test_parity_cli_defaults_to_the_adapted_reference(cli: Any, gstore: Any, tiny: dict[str, Any], lora: tuple[Any, Any], dataset: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLMOPS_HOME", str(gstore.home))
    exp = run_stage("export.gguf", {"model": tiny["llama"], "adapter": lora[1]}, {"qtype": "f32"}, store=gstore).artifact
    r = cli("parity", f"sha256:{exp.digest}", "--data", f"sha256:{dataset.digest}", "--max-texts", "4", "--greedy-prompts", "2", "--json")
    assert r.code == 0, r.err
    parents = {p.role: p.digest for p in gstore.get(r.json["digest"]).manifest.parents}
    assert parents["reference"] == lora[1].digest and r.json["metrics"]["kl_mean"] < 1e-4
    assert {g["name"] for g in r.json["meta"]["gates"]} == set(DEFAULT_GATES)


def test_onnx_inline_parity_uses_the_adapted_model(gstore: Any, tiny: dict[str, Any], lora: tuple[Any, Any]) -> None:
    pytest.importorskip("onnxruntime_genai")
    art = run_stage("export.onnx", {"model": tiny["llama"], "adapter": lora[1]}, {"precision": "fp32", "parity_texts": 3},
                    store=gstore).artifact
    m = art.manifest.metrics
    assert m["kl_mean"] < 1e-3 and m["top1_agreement"] == 1.0 and m["greedy_match"] == 1.0


def test_default_gates_pass_a_4bit_export_and_skip_what_is_not_measured(gstore: Any, tiny256: Any, dataset: Any) -> None:
    from slmops.data.io import read_dataset

    q4 = run_stage("export.gguf", {"model": tiny256}, {"qtype": "q4_k_m"}, store=gstore).artifact
    r = run_stage("parity", {"candidate": q4, "reference": tiny256, "data": dataset}, {"max_texts": 8, "greedy_prompts": 4}, store=gstore)
    m = r.artifact.manifest.metrics
    assert m["kl_mean"] > 0.0004 and m["passed"], "a Q4_K_M that keeps the task passes the defaults (0.05 KL failed real models)"
    texts_only = [x for x in read_dataset(dataset) if x.kind == "text"]
    rows = {g.name: g for g in check_parity({**m, "task_drop": None}, ParityConfig())}
    assert rows["max_task_drop"].skipped and rows["max_task_drop"].passed and texts_only, "no answers, no task gate"
    rows = {g.name: g for g in check_parity({**m, "top1_agreement": 0.5}, ParityConfig())}
    assert rows["min_top1"].passed is False


def test_an_adapter_opens_on_its_base_on_torch_or_on_a_gguf_export(gstore: Any, tiny: dict[str, Any], f32: dict[str, Any],
                                                                   lora: tuple[Any, Any]) -> None:
    import numpy as np

    from slmops.runtimes import open_runtime

    _, adapter = lora
    with open_runtime(tiny["llama"]) as base, open_runtime(adapter) as on_torch, open_runtime(adapter, runtime="llamacpp") as on_gguf:
        assert on_torch.name == "torch" and on_gguf.name == "llamacpp" and on_gguf.info.extra["adapters"]
        ids = base.tokenize("the quick brown fox jumps over the lazy dog", add_special_tokens=True)
        b, t, g = (np.asarray(rt.sequence_logits(ids)) for rt in (base, on_torch, on_gguf))
    assert np.abs(t - b).max() > 0.05, "the adapter changes the model"
    assert np.abs(g - t).max() < 0.1 * np.abs(g - b).max(), "llama.cpp with the converted adapter follows the adapted model"
