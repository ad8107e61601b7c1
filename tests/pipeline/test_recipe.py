"""Recipes: strict parsing with step/field errors, ordering, dry-run, caching, --until, --force, actions."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from slmops.errors import ConfigError
from slmops.pipeline.execute import run_recipe
from slmops.pipeline.recipe import load_recipe, parse_recipe
from slmops.store import Store

RECIPE = {
    "name": "mini",
    "vars": {"n": 40},
    "steps": {
        "clean": {"stage": "data.dedup", "inputs": {"data": "${data}"}, "name": "mini-clean"},
        "data": {"stage": "data.synth", "config": {"task": "arithmetic", "n": "${vars.n}"}, "name": "mini-data"},
        "model": {"stage": "models.init", "inputs": {"data": "${clean}"}, "config": {"arch": "qwen2", "vocab_size": 400}},
        "prod": {"action": "alias", "target": "${model}", "alias": "mini@prod"},
    },
}


def test_order_follows_inputs_not_file_order() -> None:
    r = parse_recipe(RECIPE)
    assert r.order() == ["data", "clean", "model", "prod"]
    assert r.order(until="clean") == ["data", "clean"]
    gated = parse_recipe({"name": "g", "steps": {"later": {"stage": "data.synth", "gates": ["records>=ref"], "ref": "${first}"},
                                                 "first": {"stage": "data.synth"}}})
    assert gated.order() == ["first", "later"] and gated.order(until="later") == ["first", "later"], "a gate's ref is a dependency"


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"steps": {"x": {"stage": "data.synth", "config": {"nn": 3}}}}, "step 'x' (data.synth) config"),
        ({"steps": {"x": {"stage": "data.synth", "colour": 1}}}, "step 'x', field colour: unknown field"),
        ({"steps": {"x": {"stage": "no.such"}}}, "unknown stage 'no.such'"),
        ({"steps": {"x": {"stage": "data.dedup", "inputs": {"data": "${nope}"}}}}, "names no step"),
        ({"steps": {"x": {"stage": "data.dedup"}}}, "missing data"),
        ({"steps": {"x": {"stage": "data.synth", "action": "alias"}}}, "exactly one of"),
        ({"steps": {"x": {"stage": "data.synth", "config": {"n": "${vars.missing}"}}}}, "${vars.missing} is not defined"),
        ({"steps": {"a": {"stage": "data.dedup", "inputs": {"data": "${b}"}}, "b": {"stage": "data.dedup", "inputs": {"data": "${a}"}}}}, "cycle"),
        ({"steps": {"x": {"stage": "data.synth", "gates": ["records>>3"]}}}, "step 'x', gates: --gate 'records>>3' is not a gate"),
        ({"vars": {"t": "x"}, "steps": {"x": {"stage": "data.synth", "gates": ["records>=${vars.t}"]}}}, "step 'x', gates"),
        ({"steps": {"x": {"action": "alias", "target": "${nope.chosen}", "alias": "a@b"}}}, "names no step"),
        ({"steps": {"x": {"stage": "data.synth", "gates": ["records>=ref"], "ref": "${nope}"}}}, "step 'x', input ref: ${nope} names no step"),
        ({"steps": {"x": {"stage": "data.synth", "gates": ["records>=0.5*ref"]}}}, "step 'x', gates: 'records>=0.5*ref' compares with ref"),
        ({"steps": {"x": {"action": "alias", "target": "${y}", "alias": "a@b", "ref": "${y}"}, "y": {"stage": "data.synth"}}},
         "'ref' is for a stage step's gates"),
    ],
)
def test_errors_name_step_and_field(patch: dict, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_recipe({"name": "bad", **patch})
    assert message in exc.value.message


def test_run_is_cached_resumable_and_forceable(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    recipe = load_recipe(path)
    plan = run_recipe(recipe, store=store, dry_run=True)
    assert [(r.step, r.status) for r in plan] == [("data", "planned"), ("clean", "planned"), ("model", "planned"), ("prod", "planned")]
    assert store.artifacts_list(named_only=False) == []

    first = run_recipe(recipe, store=store)
    assert [r.status for r in first] == ["ran", "ran", "ran", "done"]
    assert store.lookup("mini", alias="prod").digest == first[2].artifact.digest
    assert store.parents(first[2].artifact.digest) == [(first[1].artifact.digest, "data")]

    again = run_recipe(recipe, store=store)
    assert [r.status for r in again] == ["cached", "cached", "cached", "done"]
    assert [r.status for r in run_recipe(recipe, store=store, dry_run=True)] == ["cached", "cached", "cached", "planned"]

    forced = run_recipe(recipe, store=store, force={"clean"}, until="clean")
    assert [(r.step, r.status) for r in forced] == [("data", "cached"), ("clean", "ran")]

    changed = load_recipe(path, overrides={"n": 50})
    assert [r.status for r in run_recipe(changed, store=store, until="data")] == ["ran"]
    with pytest.raises(ConfigError, match="not a var"):
        load_recipe(path, overrides={"m": 1})


def test_crash_resumes_at_failed_step(store: Store, tmp_path: Path) -> None:
    bad = {**RECIPE, "steps": {**RECIPE["steps"], "model": {**RECIPE["steps"]["model"], "inputs": {"data": str(tmp_path / "gone.jsonl")}}}}
    recipe = parse_recipe(bad)
    with pytest.raises(ConfigError, match="step 'model', input data"):
        run_recipe(recipe, store=store)
    statuses = [r.status for r in run_recipe(parse_recipe(RECIPE), store=store)]
    assert statuses[:2] == ["cached", "cached"], "finished steps are not redone after a failure"


def test_cli_run_dry_run_json_and_quickstart_parses(cli, tmp_path: Path) -> None:
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    r = cli("run", str(path), "--dry-run", "--json")
    assert r.code == 0, r.err
    assert [s["status"] for s in r.json["steps"]] == ["planned"] * 4
    r = cli("run", str(path), "--until", "data", "--set", "n=30", "--json")
    assert r.code == 0, r.err and r.json["steps"][0]["metrics"]["records"] == 30
    examples = Path(__file__).resolve().parents[2] / "examples"
    for recipe_file in sorted(examples.glob("*.yaml")):
        load_recipe(recipe_file)  # every shipped recipe validates
    assert cli("stages", "--json").code == 0


def test_step_field_reference_resolves_a_reported_digest(store: Store) -> None:
    """``${step.FIELD}`` is the artifact whose digest the step reports as metric FIELD_digest; a missing one is named."""
    recipe = {
        "name": "refs",
        "vars": {"n": 30},
        "steps": {
            "data": {"stage": "data.synth", "config": {"task": "arithmetic", "n": "${vars.n}"}},
            "first": {"stage": "data.dedup", "inputs": {"data": "${data.output}"}},
            "prod": {"action": "alias", "target": "${data.chosen}", "alias": "refs@prod"},
        },
    }
    assert parse_recipe(recipe).order() == ["data", "first", "prod"]
    assert [r.status for r in run_recipe(parse_recipe(recipe), store=store, dry_run=True)] == ["planned", "planned", "planned"]
    with pytest.raises(ConfigError, match=r"step 'prod', target: \$\{data.chosen\} names no artifact") as exc:
        run_recipe(parse_recipe(recipe), store=store)
    assert "reports no metric chosen_digest" in exc.value.why
