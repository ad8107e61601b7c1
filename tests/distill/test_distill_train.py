"""Stage 2: SFT on teacher answers, logit KD from a local teacher (three losses), KD from stored top-k, errors."""

from __future__ import annotations

import json

import pytest

from slmops.distill.config import GenerateConfig
from slmops.errors import ConfigError
from slmops.stage import split_options
from slmops.stage.runner import run_stage

FAST = {"max_steps": 2, "batch_size": 4, "max_length": 128, "validation_fraction": 0.2}


@pytest.fixture
def answers(store):
    """A dataset with answers (as a teacher would have given them)."""
    return run_stage("data.synth", {}, {"task": "support-intent", "n": 30}, store=store).artifact


def test_sft_mode_trains_the_student(store, answers, tiny_pair):
    r = run_stage("distill.train", {"student": tiny_pair["student"], "data": answers}, {"train": FAST}, store=store)
    m = r.artifact.manifest
    assert m.kind == "model" and sorted(p.role for p in m.parents) == ["data", "student"]
    assert m.meta["distill"]["mode"] == "sft" and m.metrics["steps"] == 2
    assert m.stage.config["train"]["epochs"] == 3  # the distillation default, resolved into the manifest


def test_run_options_reach_the_training_loop(store, answers, tiny_pair):
    """``save_every``, ``keep_run_dir`` and ``resume`` set on distill.train drive its checkpoints; none is cache-keyed."""
    from slmops.stage.runner import prepare_stage

    inputs, cfg = {"student": tiny_pair["student"], "data": answers}, {"train": FAST}
    workdir = store.home / "runs" / prepare_stage("distill.train", inputs, cfg)[2]
    r = run_stage("distill.train", inputs, cfg, store=store, options={"save_every": 1, "keep_run_dir": True})
    assert [p.name for p in (workdir / "checkpoints").iterdir()] == ["step-00000001"]  # every step before the last, kept
    assert r.artifact.manifest.meta["run_options"] == {"save_every": 1, "keep_run_dir": True}
    assert run_stage("distill.train", inputs, cfg, store=store, options={"save_every": 5}).cached  # options are no part of the key
    run_stage("distill.train", inputs, cfg, store=store, force=True)
    assert not workdir.exists()  # the default (keep_run_dir off) clears it after success
    with pytest.raises(ConfigError, match="--resume: there is no checkpoint of this run"):
        run_stage("distill.train", inputs, cfg, store=store, force=True, options={"resume": "always"})


@pytest.mark.parametrize("loss", ["forward_kl", "reverse_kl", "jsd"])
def test_logit_kd_from_a_local_teacher(store, answers, tiny_pair, loss):
    inputs = {"student": tiny_pair["student"], "data": answers, "teacher": tiny_pair["teacher"]}
    r = run_stage("distill.train", inputs, {"loss": loss, "alpha": 0.7, "temperature": 2.0, "train": FAST}, store=store)
    m = r.artifact.manifest
    assert m.meta["distill"]["mode"] == "logits" and m.meta["distill"]["loss"] == loss
    assert m.metrics["distill_kd_tokens"] > 0 and m.metrics["distill_kd_loss_mean"] > 0
    assert sorted(p.role for p in m.parents) == ["data", "student", "teacher"]


def test_different_vocabularies_are_a_clear_error(store, answers, tiny_pair):
    with pytest.raises(ConfigError, match="share a tokenizer") as exc:
        run_stage(
            "distill.train", {"student": tiny_pair["other"], "data": answers, "teacher": tiny_pair["teacher"]}, {"train": FAST}, store=store
        )
    assert "--mode sft" in str(exc.value)


def test_kd_from_stored_topk_of_a_local_teacher(store, prompts, tiny_pair):
    gen = run_stage(
        "distill.generate",
        {"prompts": prompts, "teacher": tiny_pair["teacher"]},
        {
            "max_tokens": 4,
            "top_logprobs": 5,
            "temperature": 1.0,
            "splits": ["train", "validation"],
            "validation": {"drop_truncated": False, "drop_refusals": False},
        },
        store=store,
    ).artifact
    r = run_stage("distill.train", {"student": tiny_pair["student"], "data": gen}, {"loss": "jsd", "train": FAST}, store=store)
    d = r.artifact.manifest.meta["distill"]
    # a random teacher sampling at T=1 writes token sequences its tokenizer would not produce from the text; most still line up
    assert d["mode"] == "topk" and d["topk_records"] / 2 <= d["topk_aligned"] <= d["topk_records"] and d["kd_tokens"] > 0


def test_kd_from_endpoint_topk_given_as_token_strings(store, prompts, tiny_pair, teacher_server, http_cfg):
    """An API teacher returns token strings: they are mapped onto the student's vocabulary (same tokenizer here)."""
    from slmops.models.loading import load_tokenizer

    tok = load_tokenizer(tiny_pair["teacher"])

    def logprobs(text: str, k: int) -> dict:
        ids = tok.encode(text, add_special_tokens=False)
        piece = lambda i: tok.decode([i])
        return {
            "content": [
                {
                    "token": piece(i),
                    "logprob": -0.2,
                    "top_logprobs": [{"token": piece(i), "logprob": -0.2}]
                    + [{"token": piece((i + j + 7) % 300), "logprob": -2.0 - j} for j in range(k - 1)],
                }
                for i in ids
            ]
        }

    teacher_server.script.answer = lambda body: "refund"
    teacher_server.script.logprobs = logprobs
    endpoint, options = split_options(http_cfg, GenerateConfig)
    gen = run_stage(
        "distill.generate", {"prompts": prompts}, {**endpoint, "top_logprobs": 3, "validation": {"drop_duplicates": False}}, store=store,
        options=options,
    ).artifact
    row = json.loads((gen.path / "topk" / "train.jsonl").read_text().splitlines()[0])
    assert "ids" not in row and row["tokens"]
    r = run_stage("distill.train", {"student": tiny_pair["student"], "data": gen}, {"train": FAST}, store=store)
    d = r.artifact.manifest.meta["distill"]
    assert d["mode"] == "topk" and d["topk_aligned"] == d["topk_records"] and d["kd_tokens"] > 0
    # a student with another vocabulary that splits the answers differently: the stored top-k cannot be used
    teacher_server.script.answer = lambda body: "Please send my headphones to Lisbon instead, the billing address changed"
    gen = run_stage(
        "distill.generate",
        {"prompts": prompts},
        {**endpoint, "top_logprobs": 3, "validation": {"drop_duplicates": False}, "splits": ["train"]},
        store=store,
        options={**options, "cache": False},
    ).artifact
    with pytest.raises(ConfigError, match="do not match the student's tokenizer"):
        run_stage("distill.train", {"student": tiny_pair["other"], "data": gen}, {"mode": "topk", "train": FAST}, store=store)


def test_practice_warnings_and_bad_settings(store, answers, tiny_pair, caplog):
    from slmops.distill.train import DistillTrainConfig, practice_warnings
    from slmops.finetune.config import make_config

    cfg = DistillTrainConfig(train={"learning_rate": 1e-3, "epochs": 9})
    ft = make_config("full", cfg.train)
    assert practice_warnings(tiny_pair["student"], cfg, ft) == []  # a random-init student: no rule of thumb applies
    finetuned = run_stage("distill.train", {"student": tiny_pair["student"], "data": answers}, {"train": FAST}, store=store).artifact
    warnings = practice_warnings(finetuned, cfg, ft)
    assert any("--learning-rate 0.001 is outside" in w for w in warnings) and any("--epochs 9" in w for w in warnings)
    with pytest.raises(ConfigError, match="lora-rank"):
        DistillTrainConfig(method="lora", train={"lora_rank": 0})
    with pytest.raises(ConfigError, match="needs a local teacher"):
        run_stage("distill.train", {"student": tiny_pair["student"], "data": answers}, {"mode": "logits", "train": FAST}, store=store)
