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
    assert "gate accuracy>=0.95*ref failed: accuracy = 0.9, needs >= 0.95" in exc.value.message
    enforce(res[1:])  # all passed: nothing raised
    worse = check_gates(parse_gates(["accuracy>=0.95", "perplexity<=11", "exact_match>=0"]), metrics)
    with pytest.raises(GateFailed) as exc:
        enforce(worse, where="step 'eval'")
    assert exc.value.message.startswith("2 of 3 quality gates failed at step 'eval': accuracy = 0.9, needs >= 0.95; perplexity = 12, needs <= 11")


def test_ref_offsets_and_limit_fields_are_gates_too() -> None:
    from pydantic import BaseModel

    from slmops.evaluate.gates import limit_gates

    g = parse_gate("accuracy>=ref-0.02")
    assert (g.factor, g.offset) == (1.0, -0.02) and parse_gate("ppl<=1.1*ref+0.5").offset == 0.5
    res = check_gates([g, parse_gate("ppl<=1.1*ref+0.5")], {"accuracy": 0.79, "ppl": 11.6}, {"accuracy": 0.8, "ppl": 10.0})
    assert [r.passed for r in res] == [True, False] and res[0].threshold == pytest.approx(0.78) and res[1].threshold == pytest.approx(11.5)
    with pytest.raises(ConfigError, match="only ref can be"):
        parse_gate("accuracy>=0.9-0.1")

    class Limits(BaseModel):
        max_kl: float | None = 0.25
        min_top1: float | None = None
        max_size_bytes: int | None = 3_000_000

    gates = limit_gates(Limits(), {"max_kl": ("kl_mean", "<="), "min_top1": ("top1", ">="), "max_size_bytes": ("size_bytes", "<=")})
    assert [(x.text, x.name) for x in gates] == [("kl_mean<=0.25", "max_kl"), ("size_bytes<=3000000", "max_size_bytes")]
    rows = check_gates(gates, {"kl_mean": None, "size_bytes": 3_400_000}, unmeasured="skip")
    assert rows[0].skipped and rows[0].passed and rows[0].detail == "kl_mean: not measured"
    assert not rows[1].passed and rows[1].to_dict() == {
        "gate": "size_bytes<=3000000", "metric": "size_bytes", "op": "<=", "threshold": 3e6, "value": 3.4e6, "passed": False,
        "reason": None, "skipped": False, "name": "max_size_bytes", "detail": "size_bytes = 3400000, needs <= 3000000"}
    with pytest.raises(GateFailed, match=r"gate size_bytes<=3000000 failed: .*\(1 more not measured\)"):
        enforce(rows)


def test_gate_errors() -> None:
    with pytest.raises(ConfigError, match="did not compute"):
        check_gates(parse_gates(["bleu>=0.1"]), {"accuracy": 1.0})
    with pytest.raises(ConfigError, match="--ref"):
        check_gates(parse_gates(["accuracy>=0.9*ref"]), {"accuracy": 1.0})
    res = check_gates(parse_gates(["accuracy>=0.5"]), {"accuracy": None})
    assert not res[0].passed and res[0].reason
    with pytest.raises(ConfigError, match="chosen is 'gguf:q8_0', not a number"):
        check_gates(parse_gates(["chosen>=1"]), {"chosen": "gguf:q8_0"})
    assert check_gates(parse_gates(["passed==1"]), {"passed": True})[0].passed, "a flag counts as 0 or 1"


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


def test_a_recipe_gate_compares_with_another_steps_metrics(store: object, tiny_llama: object) -> None:
    """``*ref`` in a recipe: ``ref`` is the metrics of the step named by ``ref:`` (or of the eval's ``ref`` input)."""
    from slmops.pipeline.execute import run_recipe
    from slmops.pipeline.recipe import parse_recipe

    evaluate = {"inputs": {"model": str(tiny_llama.path), "data": "${data}"}, "config": {"metrics": ["token_f1"], "limit": 2, "max_tokens": 4}}  # type: ignore[attr-defined]

    def recipe(gate: str, **step: object) -> object:
        return parse_recipe({"name": "ref-gated", "steps": {
            "data": {"stage": "data.synth", "config": {"task": "support-intent", "n": 20}},
            "base": {"stage": "eval", **evaluate},
            "candidate": {"stage": "eval", **evaluate, **step, "gates": [gate]},
        }})

    # the ref input of eval: the same model, so the same score, and token_f1>=ref holds with equality
    with_input = {"inputs": {**evaluate["inputs"], "ref": "${base}"}}  # type: ignore[dict-item]
    done = {r.step: r for r in run_recipe(recipe("token_f1>=ref", **with_input), store=store)}  # type: ignore[arg-type]
    base = done["base"].metrics["token_f1"]
    assert done["candidate"].gates[0]["passed"] and done["candidate"].gates[0]["threshold"] == pytest.approx(base)
    # ref: names the step explicitly (no ref input); a margin no score can reach stops the run
    with pytest.raises(GateFailed) as failed:
        run_recipe(recipe("token_f1>=ref+1.01", ref="${base}"), store=store)  # type: ignore[arg-type]
    assert failed.value.exit_code == 3 and "gate token_f1>=ref+1.01 failed at step 'candidate'" in failed.value.message
    assert f"needs >= {base + 1.01:.4g}" in failed.value.message
    # a relative gate with nothing to compare with is refused before anything runs
    with pytest.raises(ConfigError, match="step 'candidate', gates: 'token_f1>=ref' compares with ref, but the step names no reference"):
        recipe("token_f1>=ref")
