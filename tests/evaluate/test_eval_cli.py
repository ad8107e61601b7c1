"""``slmops eval`` from the command line: reports, gates and their exit codes (0 pass, 3 gate failed, 1 error)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def test_gates_pass_and_fail_with_exit_codes(run_cli: Any, label_server: str, tiny_llama: Any, tmp_path: Path) -> None:
    code, out, _ = run_cli("data", "synth", "support-intent", "--n", "40", "--name", "intents", "--json")
    assert code == 0
    code, out, err = run_cli("eval", "--url", label_server, "--data", "intents", "--metrics", "accuracy",
                             "--gate", "accuracy>=0.95", "--gate", "exact_match>=0.9", "--name", "labeller-eval", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["passed"] and [g["passed"] for g in d["gates"]] == [True, True]
    assert set(d["report"]["metrics"]) == {"accuracy", "exact_match"}  # a gate's metric is computed even if --metrics omits it

    code, out, err = run_cli("eval", "--url", label_server, "--data", "intents", "--metrics", "accuracy", "--gate", "accuracy>1", "--json")
    assert code == 3
    assert json.loads(out)["passed"] is False and "quality gate" in err

    # relative gates: the tiny random model keeps ~0% of the labeller's accuracy
    tiny = str(tiny_llama.path)
    code, out, err = run_cli("eval", tiny, "--data", "intents", "--metrics", "accuracy", "--limit", "3", "--max-tokens", "4",
                             "--ref", "labeller-eval", "--gate", "accuracy>=0.95*ref")
    assert code == 3, err
    assert "retention" in out and "accuracy>=0.95*ref" in err
    code, out, err = run_cli("eval", "--url", label_server, "--data", "intents", "--metrics", "accuracy",
                             "--ref", "labeller-eval", "--gate", "accuracy>=0.95*ref", "--json")
    assert code == 0, err
    assert json.loads(out)["report"]["retention_pct"]["accuracy"] == 100.0
    # a model as --ref is evaluated with the same settings first (and cached)
    code, out, err = run_cli("eval", tiny, "--data", "intents", "--metrics", "accuracy", "--limit", "3", "--max-tokens", "4",
                             "--ref", tiny, "--gate", "accuracy>=ref", "--samples-out", str(tmp_path / "s.jsonl"), "--json")
    assert code == 0, err
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 3


def test_usage_errors_exit_1_and_name_the_flag(run_cli: Any, label_server: str) -> None:
    run_cli("data", "synth", "support-intent", "--n", "20", "--name", "d")
    code, _, err = run_cli("eval", "--url", label_server, "--data", "d", "--gate", "accuracy=>0.9")
    assert code == 1 and "--gate" in err
    code, _, err = run_cli("eval", "--data", "d")
    assert code == 1 and "--url" in err
    code, _, err = run_cli("eval", "--url", label_server, "--data", "d", "--metrics", "accuracy", "--gate", "bleu>=0.5*ref")
    assert code == 1 and "--ref" in err
