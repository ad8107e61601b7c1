"""Quality gates: parsing, absolute and relative thresholds, errors that name the flag, the exit code."""

from __future__ import annotations

import pytest

from slmops.errors import ConfigError
from slmops.evaluate.gates import GATE_EXIT_CODE, GateFailed, check_gates, enforce, evaluate_gates, gate_metrics, parse_gate, parse_gates


def test_parse() -> None:
    g = parse_gate("exact_match>=0.9")
    assert (g.metric, g.op, g.value, g.relative) == ("exact_match", ">=", 0.9, False)
    g = parse_gate(" accuracy >= 0.95*ref ")
    assert (g.metric, g.op, g.value, g.factor, g.relative) == ("accuracy", ">=", None, 0.95, True)
    assert parse_gate("perplexity<=1.1 * ref").factor == 1.1
    assert parse_gate("accuracy>=ref").factor == 1.0
    assert parse_gate("judge_relevance>4").op == ">"
    assert parse_gate("errors==0").value == 0.0
    assert gate_metrics(parse_gates(["a>=1", "b<2", "a<=3"])) == ["a", "b"]


@pytest.mark.parametrize("bad", ["accuracy=>0.9", "accuracy>=", ">=0.9", "accuracy>=0.9*0.5", "accuracy ~ 1", "accuracy>=x"])
def test_malformed_gates_name_the_flag(bad: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_gate(bad)
    assert "--gate" in exc.value.message


def test_absolute_and_relative_thresholds() -> None:
    metrics = {"accuracy": 0.9, "perplexity": 12.0, "exact_match": 0.5}
    ref = {"accuracy": 1.0, "perplexity": 10.0, "exact_match": 0.5}
    res = check_gates(parse_gates(["accuracy>=0.95*ref", "perplexity<=1.25*ref", "exact_match>=ref", "accuracy>0.85"]), metrics, ref)
    assert [r.passed for r in res] == [False, True, True, True]
    assert res[0].threshold == pytest.approx(0.95) and res[0].value == 0.9
    assert res[1].threshold == pytest.approx(12.5)
    with pytest.raises(GateFailed) as exc:
        enforce(res)
    assert exc.value.exit_code == GATE_EXIT_CODE == 3
    assert "accuracy>=0.95*ref (got 0.9, needs >= 0.95)" in exc.value.message
    enforce(res[1:])  # all passed: nothing raised


def test_gate_errors() -> None:
    with pytest.raises(ConfigError, match="did not compute"):
        check_gates(parse_gates(["bleu>=0.1"]), {"accuracy": 1.0})
    with pytest.raises(ConfigError, match="--ref"):
        check_gates(parse_gates(["accuracy>=0.9*ref"]), {"accuracy": 1.0})
    res = check_gates(parse_gates(["accuracy>=0.5"]), {"accuracy": None})
    assert not res[0].passed and res[0].reason


def test_evaluate_gates_for_recipes() -> None:
    out = evaluate_gates(["accuracy>=0.9", "errors<=0"], {"accuracy": 0.8, "errors": 0})
    assert [d["passed"] for d in out] == [False, True]
    assert out[0]["detail"] == "accuracy = 0.8, needs >= 0.9"


def test_a_recipe_step_stops_at_an_eval_gate(store: object, tiny_llama: object) -> None:
    """The same stage and gate grammar in a recipe: a passing gate lets the run go on, a failing one stops it."""
    from slmops.evaluate.gates import GateFailed as RecipeGateFailed
    from slmops.pipeline.execute import run_recipe
    from slmops.pipeline.recipe import parse_recipe

    def recipe(gate: str) -> object:
        return parse_recipe({"name": "gated", "steps": {
            "data": {"stage": "data.synth", "config": {"task": "support-intent", "n": 20}},
            "quality": {"stage": "eval", "inputs": {"model": str(tiny_llama.path), "data": "${data}"},  # type: ignore[attr-defined]
                        "config": {"metrics": ["token_f1"], "limit": 2, "max_tokens": 4}, "gates": [gate]},
        }})

    done = run_recipe(recipe("token_f1>=0"), store=store)  # type: ignore[arg-type]
    assert done[-1].gates[0]["passed"] and done[-1].artifact.kind == "report"  # type: ignore[union-attr]
    with pytest.raises(RecipeGateFailed) as failed:
        run_recipe(recipe("token_f1>1"), store=store)  # type: ignore[arg-type]
    assert failed.value.exit_code == 3 and "step 'quality'" in failed.value.message
