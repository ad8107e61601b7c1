"""Hyper-parameter search: real trials through the stage runner; the best is registered and tagged."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmops.errors import ConfigError


def test_search_runs_trials_and_marks_the_best(ft_store, base, task) -> None:
    from slmops.finetune.search import BEST_TAG, search

    space = {"learning_rate": {"type": "float", "low": 1e-3, "high": 2e-2, "log": True}, "lora_rank": [2, 4]}
    res = search(base, task, method="lora", space=space, trials=3, strategy="tpe", config={"max_steps": 6, "batch_size": 8},
                 store=ft_store, name="support-search", seed=1)
    rows = res["trials"]
    assert len(rows) == 3 and all(r["state"] == "complete" for r in rows)
    assert all(1e-3 <= r["params"]["learning_rate"] <= 2e-2 and r["params"]["lora_rank"] in (2, 4) for r in rows)
    best = res["best"]
    assert best["value"] == min(r["value"] for r in rows) and sum(r["best"] for r in rows) == 1
    assert ft_store.lookup("support-search").digest == best["digest"]
    assert BEST_TAG in ft_store.tags(best["digest"])
    art = ft_store.get(best["digest"])
    assert art.manifest.stage.config["learning_rate"] == best["params"]["learning_rate"]
    # the same seeded search proposes the same trials, which are now cache hits
    again = search(base, task, method="lora", space=space, trials=3, strategy="tpe", config={"max_steps": 6, "batch_size": 8},
                   store=ft_store, name="support-search", seed=1)
    assert [r["digest"] for r in again["trials"]] == [r["digest"] for r in rows] and all(r["cached"] for r in again["trials"])


def test_random_search_records_failed_trials(ft_store, base, task) -> None:
    from slmops.finetune.search import search

    space = {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2}, "max_length": [8, 256]}
    res = search(base, task, method="lora", space=space, trials=3, strategy="random", config={"max_steps": 3},
                 store=ft_store, name="random-search", seed=4)
    states = {r["params"]["max_length"]: r["state"] for r in res["trials"]}
    assert states.get(8, "failed") == "failed" and "complete" in states.values()
    failed = [r for r in res["trials"] if r["state"] == "failed"]
    assert all("max-length" in r["error"] for r in failed)


def test_bad_spaces_are_reported(tmp_path: Path) -> None:
    from slmops.finetune.search import load_space

    with pytest.raises(ConfigError, match="'lora_rnk' is not a setting of --method lora"):
        load_space({"lora_rnk": [2, 4]}, "lora")
    with pytest.raises(ConfigError, match="log-scaled"):
        load_space({"learning_rate": {"type": "float", "low": 0, "high": 1, "log": True}}, "lora")
    with pytest.raises(ConfigError, match="is not a setting of --method full"):
        load_space({"lora_rank": [2, 4]}, "full")
    f = tmp_path / "space.yaml"
    f.write_text("learning-rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\nbatch_size: {type: choice, choices: [4, 8]}\n")
    assert set(load_space(f, "lora")) == {"learning_rate", "batch_size"}
