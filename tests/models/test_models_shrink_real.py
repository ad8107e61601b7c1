"""models.shrink on the real model: SmolLM2-135M-Instruct (dequantized from the packaged GGUF), calibrated on real prose."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_smollm2_shrinks_to_a_working_student_with_its_tokenizer(smollm2_store, smollm2_hf) -> None:
    import torch

    from slmops.models import count_parameters, load_model_and_tokenizer
    from slmops.stage.runner import run_stage

    cfg = {"num_layers": 24, "hidden_size": 384, "intermediate_size": 1024, "num_heads": 6,
           "calibration_sequences": 4, "eval_sequences": 2, "sequence_length": 64}
    student = run_stage("models.shrink", {"model": smollm2_hf}, cfg, store=smollm2_store).artifact
    m = student.manifest
    assert m.meta["calibration"]["source"] == "dataset-build" and m.meta["calibration"]["tokens"] == 4 * 64
    assert (m.meta["teacher_dims"]["num_layers"], m.meta["teacher_dims"]["num_heads"], m.meta["teacher_dims"]["num_kv_heads"]) == (30, 9, 3)
    assert len(m.meta["removed_layers"]) == 6 and m.meta["student_dims"]["num_kv_heads"] == 3  # 6 query heads in 3 KV groups of 2
    assert m.meta["removed_layers"] != list(range(1, 30, 5)) and 0 not in m.meta["removed_layers"]  # measured, not a fixed pattern; the first block matters
    assert m.metrics["parameters_teacher"] == 134_515_008 and m.metrics["parameter_ratio"] < 0.5
    assert m.metrics["perplexity_before_healing"] > m.metrics["perplexity_teacher"] > 1
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert student.file(name).read_bytes() == smollm2_hf.file(name).read_bytes()
    model, tok = load_model_and_tokenizer(student)
    assert count_parameters(model) == m.metrics["parameters"]
    assert json.loads(student.file("config.json").read_text())["tie_word_embeddings"] is True
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
