"""The retention report (measured in subprocesses) and the CLI verbs end to end."""

from __future__ import annotations

import json

from slmops.stage.runner import run_stage


def test_report_compares_teacher_and_student(store, tiny_pair):
    data = run_stage("data.synth", {}, {"task": "support-intent", "n": 40}, store=store).artifact
    inputs = {"teacher": tiny_pair["teacher"], "student": tiny_pair["student"], "data": data}
    r = run_stage("distill.report", inputs, {"limit": 4, "max_tokens": 3}, store=store)
    a = r.artifact
    assert a.kind == "report" and sorted(p.role for p in a.manifest.parents) == ["data", "student", "teacher"]
    doc = json.loads((a.path / "report.json").read_text())
    t, s, ret = doc["teacher"], doc["student"], doc["retention"]
    assert t["parameters"] > s["parameters"] > 0 and t["responses"] == s["responses"] == 4
    assert t["peak_rss_bytes"] > t["model_rss_bytes"] >= 0 and t["mean_latency_s"] > 0 and 0 <= t["accuracy"] <= 1
    assert ret["parameter_ratio"] == round(s["parameters"] / t["parameters"], 6)
    assert ret["latency_reduction_pct"] == round(100 * (1 - s["mean_latency_s"] / t["mean_latency_s"]), 2)
    assert "accuracy_retention_pct" in ret and (a.path / "report.md").read_text().startswith("# Distillation retention report")
    assert a.manifest.metrics["teacher_parameters"] == t["parameters"]


def test_score_rules():
    from slmops.data.records import parse_record
    from slmops.distill.measure import score

    rec = parse_record({"input": "q", "output": "refund", "label": "refund"})
    assert score("Refund.", rec) == 1.0 and score("billing", rec) == 0.0
    js = parse_record({"input": "q", "output": '{"a": 1, "b": "x"}'})
    assert score('```json\n{"b": "x", "a": 1}\n```', js) == 1.0 and score('{"a": 2}', js) == 0.0


def test_cli_train_and_generate(cli, store, prompts, tiny_pair, teacher_server):
    teacher_server.script.answer = lambda body: "refund"
    ref = f"sha256:{prompts.digest}"
    r = cli(
        "distill",
        "generate",
        "--prompts",
        ref,
        "--teacher",
        teacher_server.url,
        "--model",
        "m",
        "--task",
        "classification",
        "--label",
        "refund",
        "--label",
        "billing",
        "--json",
    )
    assert r.code == 0, r.err
    gen = r.json
    assert gen["kind"] == "dataset" and gen["metrics"]["kept"] > 0
    student = f"sha256:{tiny_pair['student'].digest}"
    r = cli(
        "distill",
        "train",
        "--student",
        student,
        "--data",
        f"sha256:{gen['digest']}",
        "--max-steps",
        "1",
        "--max-length",
        "128",
        "--set",
        "validation_fraction=0.2",
        "--name",
        "kid",
        "--json",
    )
    # the student lives in another store: resolve fails cleanly, so import it into this one by path
    if r.code != 0:
        r = cli(
            "distill",
            "train",
            "--student",
            str(tiny_pair["student"].path),
            "--data",
            f"sha256:{gen['digest']}",
            "--max-steps",
            "1",
            "--max-length",
            "128",
            "--set",
            "validation_fraction=0.2",
            "--name",
            "kid",
            "--json",
        )
    assert r.code == 0, r.err
    assert r.json["name"] == "kid:1" and r.json["meta"]["distill"]["mode"] == "sft"
    bad = cli("distill", "train", "--student", str(tiny_pair["student"].path), "--data", f"sha256:{gen['digest']}", "--loss", "kl")
    assert bad.code == 1 and "loss" in bad.err
