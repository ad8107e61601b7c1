"""``eval --executor ray --workers N``: the answering pass sharded over Ray actors, against a real OpenAI-compatible server."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pytest

pytest.importorskip("ray")


def _samples(art: Any) -> list[tuple[Any, ...]]:
    rows = [json.loads(x) for x in art.file("samples.jsonl").read_text().splitlines()]
    return [(r["index"], r["output"], r["error"], r["scores"]) for r in rows]


def test_sharded_eval_equals_local(store: Any, intent_data: Any, label_server: str, ray_cluster: Any, cli: Any) -> None:
    from slmops import progress
    from slmops.evaluate.report import load_report
    from slmops.stage.runner import run_stage

    cfg = {"metrics": ["accuracy", "exact_match"], "url": label_server, "log_samples": True}
    local = run_stage("eval", {"data": intent_data}, cfg, store=store).artifact

    class Shards:
        names: ClassVar[dict[int, str]] = {}

        def start(self, task_id: int, description: str, total: float | None) -> None:
            self.names[task_id] = description

        def update(self, task_id: int, completed: float, fields: dict[str, Any]) -> None: ...
        def finish(self, task_id: int) -> None: ...

    sink = Shards()
    with progress.use_sink(sink):
        sharded = run_stage("eval", {"data": intent_data}, cfg, store=store, force=True,
                            options={"batch_size": 2, "executor": "ray", "workers": 2}).artifact
    assert load_report(sharded)["metrics"] == load_report(local)["metrics"]
    assert _samples(sharded) == _samples(local)  # the same answers, merged in the same order
    assert {"shard 1/2", "shard 2/2"} <= set(sink.names.values())
    r = cli("eval", "--url", label_server, "--data", f"sha256:{intent_data.digest}", "-m", "accuracy", "--executor", "ray",
            "--workers", "2", "--json")
    assert r.code == 0, r.err
    assert r.json["report"]["metrics"]["accuracy"] == load_report(local)["metrics"]["accuracy"]


@pytest.mark.slow
def test_sharded_eval_of_a_local_model_equals_local(store: Any, model: Any, intent_data: Any, ray_cluster: Any) -> None:
    """Each actor opens its own copy of the model (greedy): the same answers and metrics as one local process."""
    from slmops.evaluate.report import load_report
    from slmops.stage.runner import run_stage

    cfg = {"metrics": ["exact_match", "token_f1"], "limit": 6, "max_tokens": 6, "log_samples": True}
    inputs = {"model": model, "data": intent_data}
    local = run_stage("eval", inputs, cfg, store=store).artifact
    sharded = run_stage("eval", inputs, cfg, store=store, force=True, options={"batch_size": 2, "executor": "ray", "workers": 2}).artifact
    assert load_report(sharded)["metrics"] == load_report(local)["metrics"]
    assert _samples(sharded) == _samples(local)
