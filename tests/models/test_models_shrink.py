"""models.shrink: depth and width pruning of real tiny architectures, choices that follow measured importance, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from slmops.errors import ConfigError

TEXTS_N = 120
CALIB = {"calibration_sequences": 6, "eval_sequences": 4, "sequence_length": 32}


@pytest.fixture(scope="session")
def deep_models(model_store) -> dict[str, Any]:
    """arch -> a tiny 4-layer model with GQA (4 query heads, 2 KV heads) and its calibration dataset."""
    from slmops.testing import text_dataset, tiny_corpus, tiny_model

    texts = tiny_corpus(TEXTS_N)
    data = text_dataset(texts, store=model_store)
    out = {a: tiny_model(a, store=model_store, num_layers=4, num_heads=4, num_kv_heads=2, hidden_size=64, intermediate_size=128) for a in ("llama", "qwen2", "phi3")}
    return {"models": out, "data": data}


def _shrink(store: Any, model: Any, data: Any, **cfg: Any) -> Any:
    from slmops.stage.runner import run_stage

    return run_stage("models.shrink", {"model": model, "data": data}, {**CALIB, **cfg}, store=store).artifact


def _edited(store: Any, model: Any, tmp_path: Path, edit: Any) -> Any:
    """A copy of ``model`` with ``edit(state_dict)`` applied, imported through models.import."""
    import torch

    from slmops.models import load_model_and_tokenizer
    from slmops.stage.runner import run_stage

    m, _ = load_model_and_tokenizer(model)
    with torch.no_grad():
        edit(m)
    folder = tmp_path / "edited"
    shutil.copytree(model.path, folder, ignore=shutil.ignore_patterns("manifest.json", "*.safetensors"))
    m.save_pretrained(str(folder))
    return run_stage("models.import", {}, {"path": str(folder)}, store=store).artifact


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_depth_and_width_shrink_loads_generates_and_counts(model_store, deep_models, arch: str) -> None:
    import torch

    from slmops.models import count_parameters, load_model_and_tokenizer

    teacher = deep_models["models"][arch]
    student = _shrink(model_store, teacher, deep_models["data"], num_layers=2, hidden_size=48, intermediate_size=64, num_heads=2)
    m = student.manifest
    assert student.kind == "model" and m.format == "hf-safetensors" and m.stage.name == "models.shrink"
    assert {p.digest for p in m.parents} == {teacher.digest, deep_models["data"].digest}
    cfg = json.loads(student.file("config.json").read_text())
    assert (cfg["model_type"], cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"]) == (arch, 2, 48, 64)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (2, 2, 16)  # GQA kept valid, head size unchanged
    assert cfg["tie_word_embeddings"] is True
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the teacher's tokenizer, byte for byte
        assert student.file(name).read_bytes() == teacher.file(name).read_bytes()
    meta = m.meta
    assert len(meta["removed_layers"]) == 2 and sorted(meta["kept_layers"] + meta["removed_layers"]) == [0, 1, 2, 3]
    assert meta["kept_hidden_channels"] == 48 and meta["kept_intermediate_channels"] == 64 and meta["kept_heads"] == 2
    model, tok = load_model_and_tokenizer(student)
    assert count_parameters(model) == m.metrics["parameters"] < m.metrics["parameters_teacher"]
    teacher_model, _ = load_model_and_tokenizer(teacher)
    assert m.metrics["parameters_teacher"] == count_parameters(teacher_model)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    assert m.metrics["perplexity_before_healing"] > 1 and m.metrics["perplexity_teacher"] > 1
    ids = tok("Hello there", return_tensors="pt")
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] == ids["input_ids"].shape[1] + 4 or int(gen[0, -1]) in model.generation_config.eos_token_id
    plan = json.loads(student.file("shrink.json").read_text())
    assert len(plan["kept_hidden_indices"]) == 48 and len(plan["block_influence"]) == 4


def test_phi3_fused_projections_shrink(model_store, deep_models) -> None:
    from slmops.models import count_parameters, load_model_and_tokenizer

    teacher = deep_models["models"]["phi3"]
    student = _shrink(model_store, teacher, deep_models["data"], num_layers=3, hidden_size=32, num_heads=2, num_kv_heads=1)
    model, _ = load_model_and_tokenizer(student)
    assert model.config.num_attention_heads == 2 and model.config.num_key_value_heads == 1 and model.config.hidden_size == 32
    assert count_parameters(model) == student.manifest.metrics["parameters"]
    assert student.manifest.metrics["perplexity_before_healing"] < 1e6


def test_a_near_identity_layer_is_the_one_dropped(model_store, deep_models, tmp_path: Path) -> None:
    teacher = deep_models["models"]["llama"]

    def silence_layer_2(m: Any) -> None:  # block 2 adds ~nothing to the residual stream: output ≈ input
        m.model.layers[2].self_attn.o_proj.weight.mul_(1e-4)
        m.model.layers[2].mlp.down_proj.weight.mul_(1e-4)

    edited = _edited(model_store, teacher, tmp_path, silence_layer_2)
    student = _shrink(model_store, edited, deep_models["data"], num_layers=3)
    meta = student.manifest.meta
    assert meta["removed_layers"] == [2], meta["block_influence"]
    assert meta["block_influence"][2] < min(b for i, b in enumerate(meta["block_influence"]) if i != 2) / 100
    ppl_t, ppl_s = student.manifest.metrics["perplexity_teacher"], student.manifest.metrics["perplexity_before_healing"]
    assert abs(ppl_s - ppl_t) / ppl_t < 1e-3  # dropping it changed nothing measurable


def test_dead_channel_and_dead_kv_group_are_pruned_first(model_store, deep_models, tmp_path: Path) -> None:
    teacher = deep_models["models"]["qwen2"]
    dead_channel, head_dim = 5, 16

    def kill(m: Any) -> None:
        m.model.embed_tokens.weight[:, dead_channel] = 0  # hidden channel 5 never carries anything
        for layer in m.model.layers:
            layer.self_attn.o_proj.weight[dead_channel] = 0
            layer.mlp.down_proj.weight[dead_channel] = 0
            layer.self_attn.v_proj.weight[head_dim:] = 0  # KV group 1 reads zero values: its heads output nothing
            layer.self_attn.v_proj.bias[head_dim:] = 0

    edited = _edited(model_store, teacher, tmp_path, kill)
    student = _shrink(model_store, edited, deep_models["data"], hidden_size=63, num_kv_heads=1, rescale_norms=False)
    plan = json.loads(student.file("shrink.json").read_text())
    assert dead_channel not in plan["kept_hidden_indices"] and len(plan["kept_hidden_indices"]) == 63
    assert all(kv == [0] for kv in plan["kept_kv_heads_per_layer"].values())
    assert all(h == [0, 1] for h in plan["kept_heads_per_layer"].values())  # the query heads of the kept group
    assert student.manifest.meta["student_dims"]["num_heads"] == 2


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"num_layers": 0}, "--num-layers 0 would leave fewer than one layer"),
        ({"hidden_size": 0}, "--hidden-size 0 would leave fewer than one hidden channel"),
        ({"num_heads": 0}, "--num-heads 0 would leave fewer than one attention head"),
        ({"num_layers": 9}, "--num-layers 9 is larger than the teacher's 4"),
        ({"num_heads": 3, "num_kv_heads": 2}, "--num-heads 3 is not a multiple of --num-kv-heads 2"),
        ({"num_heads": 4, "num_kv_heads": 1}, "needs 4 query heads per KV group"),
        ({}, "nothing to shrink"),
    ],
)
def test_bad_shrinks_are_refused_and_write_nothing(store, cfg: dict[str, Any], message: str) -> None:
    from slmops.stage.runner import run_stage
    from slmops.testing import tiny_model

    teacher = tiny_model("llama", store=store, num_layers=4, num_heads=4, num_kv_heads=2)
    before = store.artifacts_list(named_only=False)
    with pytest.raises(ConfigError, match=message.replace("'", ".")):
        run_stage("models.shrink", {"model": teacher}, cfg, store=store)
    assert store.artifacts_list(named_only=False) == before


def test_cli_shrink_and_its_one_line_error(cli, deep_models, model_store, tmp_path: Path) -> None:
    teacher = deep_models["models"]["llama"]
    folder = tmp_path / "teacher"
    shutil.copytree(teacher.path, folder, ignore=shutil.ignore_patterns("manifest.json"))
    data = tmp_path / "calib.jsonl"
    from slmops.testing import tiny_corpus

    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus(TEXTS_N)))
    bad = cli("models", "shrink", str(folder), "--name", "s", "--num-layers", "0", "--calibration", str(data))
    assert bad.code == 1 and "--num-layers 0 would leave fewer than one layer" in bad.err
    assert len(bad.err.strip().splitlines()) == 1
    r = cli("models", "shrink", str(folder), "--name", "small", "--num-layers", "3", "--calibration", str(data),
            "--calibration-sequences", "4", "--eval-sequences", "2", "--sequence-length", "32", "--json")
    assert r.code == 0, r.err
    d = r.json
    assert d["name"] == "small:1" and d["metrics"]["parameters"] < d["metrics"]["parameters_teacher"]
    assert len(d["meta"]["removed_layers"]) == 1


def _kl_to_teacher(teacher: Any, student: Any, texts: list[str]) -> float:
    """Mean KL(teacher ‖ student) per token over ``texts`` (same tokenizer)."""
    import torch

    from slmops.models import load_model_and_tokenizer

    t, tok = load_model_and_tokenizer(teacher)
    s, _ = load_model_and_tokenizer(student)
    ids = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=48)
    with torch.no_grad():
        lt = torch.log_softmax(t(**ids).logits, -1)
        ls = torch.log_softmax(s(**ids).logits, -1)
    kl = (lt.exp() * (lt - ls)).sum(-1)
    mask = ids["attention_mask"].bool()
    return float(kl[mask].mean())


def test_distill_train_heals_a_shrunk_student_with_logit_kd(model_store, deep_models) -> None:
    """The shrunk student shares the teacher's tokenizer, so full-vocabulary logit KD on prose runs and pulls it toward the teacher."""
    from slmops.data.io import read_dataset
    from slmops.stage.runner import run_stage

    teacher = deep_models["models"]["llama"]
    student = _shrink(model_store, teacher, deep_models["data"], num_layers=2, hidden_size=48)
    prose = run_stage("data.prose", {}, {"max_texts": 48}, store=model_store).artifact
    held_out = [r.text for r in read_dataset(prose, "validation")][:4]
    before = _kl_to_teacher(teacher, student, held_out)
    train = {"max_steps": 8, "batch_size": 4, "max_length": 64, "learning_rate": 3e-3, "seed": 0}
    healed = run_stage("distill.train", {"student": student, "teacher": teacher, "data": prose}, {"mode": "logits", "alpha": 1.0, "train": train}, store=model_store).artifact
    d = healed.manifest.meta["distill"]
    assert d["mode"] == "logits" and d["kd_tokens"] > 0 and d["teacher"] == teacher.digest
    assert json.loads(healed.file("config.json").read_text())["hidden_size"] == 48
    after = _kl_to_teacher(teacher, healed, held_out)
    assert after < before * 0.9, (before, after)
