"""Each method trains a tiny real model to a lower validation loss, and leaves a proper artifact."""

from __future__ import annotations

import csv
import json

import pytest

from tests.finetune.conftest import FAST, FAST_FULL


@pytest.mark.parametrize("method", ["full", "lora", "dora", "qlora"])
def test_method_lowers_validation_loss(method: str, ft_store, base, task) -> None:
    from slmops.finetune.api import finetune

    r = finetune(base, task, method=method, config=FAST_FULL if method == "full" else FAST, store=ft_store)
    m = r.artifact.manifest
    assert m.metrics["val_loss"] < m.metrics["val_loss_start"], m.metrics
    assert m.metrics["steps"] == 12 and m.metrics["stopped"] == "completed"
    assert {p.role: p.digest for p in m.parents} == {"model": base.digest, "data": task.digest}
    assert m.stage is not None and m.stage.name == f"finetune.{method}"
    files = {p.name for p in r.artifact.path.iterdir()}
    if method == "full":
        assert (m.kind, m.format) == ("model", "hf-safetensors")
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
        assert m.metrics["trainable_pct"] == 100.0
    else:
        assert (m.kind, m.format) == ("adapter", "peft")
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files
        assert 0 < m.metrics["trainable_pct"] < 50
        assert m.stage.config["lora_alpha"] == 16.0  # resolved default (2 x rank) is in the manifest
        acfg = json.loads((r.artifact.path / "adapter_config.json").read_text())
        assert acfg["peft_type"] == "LORA" and acfg["use_dora"] is (method == "dora")
        assert set(acfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    curves = json.loads((r.artifact.path / "training" / "curves.json").read_text())
    assert [row["step"] for row in curves["train"]] == list(range(1, 13))
    assert curves["eval"][0]["step"] == 0 and curves["eval"][-1]["step"] == 12
    rows = list(csv.DictReader((r.artifact.path / "training" / "curves.csv").open()))
    assert rows[0]["step"] == "0" and rows[0]["val_loss"] and rows[-1]["step"] == "12"
    if method == "qlora":
        assert m.meta["quantization"]["bits"] == 4


def test_qlora_adapter_loads_on_fp32_base(ft_store, base, task) -> None:
    """The QLoRA adapter is a plain LoRA adapter: it loads on the fp32 base and still helps there."""
    from peft import PeftModel

    from slmops.finetune.api import finetune
    from slmops.finetune.config import make_config
    from slmops.finetune.data import build_data
    from slmops.finetune.evaluation import evaluate
    from slmops.models.loading import load_model_and_tokenizer

    r = finetune(base, task, method="qlora", config=FAST, store=ft_store)
    model, tok = load_model_and_tokenizer(base)
    data = build_data(tok, task, make_config("qlora", FAST), max_length=256)
    kw = {"batch_size": 8, "pad_id": tok.pad_token_id, "device": "cpu", "autocast": lambda: __import__("contextlib").nullcontext()}
    before = evaluate(model, data.validation, **kw)["val_loss"]
    peft_model = PeftModel.from_pretrained(model, str(r.artifact.path))
    after = evaluate(peft_model, data.validation, **kw)["val_loss"]
    assert after < before


def test_phi3_fused_projections_and_text_template(ft_store, task) -> None:
    """Phi-3's fused qkv/gate_up layers are the default targets; a {field} template trains too."""
    from slmops.finetune.api import finetune
    from slmops.testing.tiny import tiny_model

    phi3 = tiny_model("phi3", store=ft_store)
    cfg = {**FAST, "text_template": "Q: {input}\nA: {output}"}
    r = finetune(phi3, task, method="lora", config=cfg, store=ft_store)
    acfg = json.loads((r.artifact.path / "adapter_config.json").read_text())
    assert set(acfg["target_modules"]) == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    assert r.artifact.manifest.metrics["val_loss"] < r.artifact.manifest.metrics["val_loss_start"]


def test_packing_trains_and_counts(ft_store, base, task) -> None:
    from slmops.finetune.api import finetune

    r = finetune(base, task, method="lora", config={**FAST, "packing": True, "max_length": 256, "batch_size": 2}, store=ft_store)
    m = r.artifact.manifest.metrics
    assert m["train_sequences"] < m["train_examples"]  # several examples per packed row
    assert m["val_loss"] < m["val_loss_start"]


def test_gradient_accumulation_matches_a_bigger_batch(ft_store, base, task) -> None:
    """Loss is normalised per answer token over the whole accumulated batch: 8x1 and 4x2 agree."""
    from slmops.finetune.api import finetune

    common = {**FAST, "max_steps": 3, "lora_dropout": 0.0}
    a = finetune(base, task, method="lora", config={**common, "batch_size": 8}, store=ft_store).artifact
    b = finetune(base, task, method="lora", config={**common, "batch_size": 4, "grad_accum": 2}, store=ft_store).artifact
    la = [r["loss"] for r in json.loads((a.path / "training" / "curves.json").read_text())["train"]]
    lb = [r["loss"] for r in json.loads((b.path / "training" / "curves.json").read_text())["train"]]
    assert la == pytest.approx(lb, rel=1e-4, abs=1e-5)


def test_early_stopping_restores_the_best_weights(ft_store, base, task) -> None:
    from slmops.finetune.api import finetune

    cfg = {"max_steps": 40, "batch_size": 8, "learning_rate": 0.5, "lr_scheduler": "constant", "eval_every": 2,
           "early_stopping_patience": 2, "max_grad_norm": 0.0}
    r = finetune(base, task, method="lora", config=cfg, store=ft_store)
    m = r.artifact.manifest.metrics
    assert m["stopped"] == "early_stopping" and m["steps"] < 40
    assert m["val_loss"] == m["best_val_loss"]
    assert r.artifact.manifest.meta["restored_best_step"] == m["best_step"]


def test_cached_rerun_and_gradient_checkpointing(ft_store, base, task) -> None:
    from slmops.finetune.api import finetune

    cfg = {**FAST, "max_steps": 4, "gradient_checkpointing": True}
    first = finetune(base, task, method="lora", config=cfg, store=ft_store)
    again = finetune(base, task, method="lora", config=cfg, store=ft_store)
    assert not first.cached and again.cached and again.digest == first.digest


def test_exact_match_metric_for_search_objectives(ft_store, base, task) -> None:
    from slmops.finetune.api import finetune

    r = finetune(base, task, method="lora", config={**FAST, "eval_generate": True, "eval_max_new_tokens": 6}, store=ft_store)
    em = r.artifact.manifest.metrics["val_exact_match"]
    assert 0.0 <= em <= 1.0
