"""The README's main job at a reduced size: examples/quickstart.yaml end to end through `slmops run`."""

from __future__ import annotations

from pathlib import Path

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"
SMALL = ["n=120", "teacher_size=tiny", "teacher_epochs=10", "student_epochs=1", "adapter_steps=2",
         "eval_limit=4", "parity_texts=4", "bench_reps=1", "bench_isolate=false"]


def test_reduced_quickstart_runs_end_to_end_then_is_fully_cached(cli, store) -> None:
    args = ["run", str(QUICKSTART), "--json"] + [x for s in SMALL for x in ("--set", s)]
    r = cli(*args)
    assert r.code == 0, r.err
    steps = {s["step"]: s for s in r.json["steps"]}
    assert all(s["status"] in ("ran", "done") for s in steps.values()), {k: s["status"] for k, s in steps.items()}
    kinds = {k: s["artifact_kind"] for k, s in steps.items()}
    assert kinds["student"] == "model" and kinds["json_adapter"] == "adapter"
    assert kinds["onnx"] == "onnx" and kinds["foundry"] == "onnx" and kinds["gguf"] == "gguf" and kinds["compare"] == "report"
    retention = steps["retention"]["metrics"]
    assert retention["student_parameters"] > 0 and retention["teacher_parameters"] > 0  # reduced run: same sizes
    assert {"accuracy_retention_pct", "latency_reduction_pct", "memory_reduction_pct"} <= set(retention)
    assert r.json["report"].endswith(".html") and Path(r.json["report"]).is_file()
    assert "quickstart@prod -> quickstart:1" in steps["prod"]["detail"]
    assert steps["smoke"]["detail"].startswith("served quickstart@prod at http://127.0.0.1:")
    assert store.lookup("quickstart", alias="prod").digest == steps["student"]["digest"]
    # lineage: the served student descends from the teacher's labels and the task data
    up = store.lineage(steps["student"]["digest"])
    roles = {c["role"]: c for c in up["children"]}
    assert roles["data"]["digest"] == steps["labels"]["digest"]

    again = cli(*args)
    assert again.code == 0, again.err
    assert {s["status"] for s in again.json["steps"] if s["kind"] not in ("alias", "serve-smoke")} == {"cached"}
