"""Adapters as evaluation targets: ``eval``, ``bench`` and ``compare`` take a LoRA adapter and run it on its recorded base.

The adapter is applied in memory (nothing merged is written): its answers are exactly those of the
merged model (``adapters merge``), and no new model artifact appears. ``compare`` reuses an evaluation
already in the store; a wrong kind of artifact is refused in good English with a hint.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from slmops.stage.runner import run_stage


@pytest.fixture
def adapter(store: Any, model: Any, intent_data: Any) -> Any:
    cfg = {"max_steps": 6, "batch_size": 8, "learning_rate": 1e-2, "seed": 0}
    return run_stage("finetune.lora", {"model": model, "data": intent_data}, cfg, store=store).artifact


def _models(store: Any) -> int:
    return sum(r["kind"] == "model" for r in store.artifacts_list())


def test_eval_bench_compare_take_an_adapter(run_cli: Any, store: Any, model: Any, adapter: Any, intent_data: Any) -> None:
    data = f"sha256:{intent_data.digest}"
    merged = run_stage("adapters.merge", {"model": model, "adapter": adapter}, {}, store=store).artifact
    models_before = _models(store)
    common = ("--data", data, "--limit", "6", "--max-tokens", "6", "--log-samples", "--json")
    code, out, err = run_cli("eval", f"sha256:{adapter.digest}", *common)
    assert code == 0, err
    on_base = json.loads(out)
    assert _models(store) == models_before, "no merged copy is written"
    t = on_base["report"]["target"]
    assert t["artifact_kind"] == "adapter" and t["base"] == model.digest and t["size_bytes"] > model.manifest.size_bytes
    code, out, err = run_cli("eval", f"sha256:{merged.digest}", *common)
    assert code == 0, err
    assert json.loads(out)["report"]["metrics"] == on_base["report"]["metrics"]
    samples = [json.loads(x)["output"] for x in (store.get(on_base["digest"]).path / "samples.jsonl").read_text().splitlines()]
    merged_samples = [json.loads(x)["output"] for x in (store.get(json.loads(out)["digest"]).path / "samples.jsonl").read_text().splitlines()]
    assert samples == merged_samples, "the adapter on its base answers exactly like the merged model"
    code, base_out, _ = run_cli("eval", f"sha256:{model.digest}", *common)
    base_samples = [json.loads(x)["output"] for x in (store.get(json.loads(base_out)["digest"]).path / "samples.jsonl").read_text().splitlines()]
    assert base_samples != samples, "and not like the bare base"

    code, out, err = run_cli("bench", f"sha256:{adapter.digest}", "--no-isolate", "--prompt-tokens", "8", "--output-tokens", "4",
                             "-r", "2", "--warmup", "0", "--json")
    assert code == 0, err
    assert json.loads(out)["report"]["target"]["base"] == model.digest

    code, out, err = run_cli("compare", f"sha256:{model.digest}", f"sha256:{adapter.digest}", "--data", data, "--limit", "6",
                             "--max-tokens", "6", "--no-isolate", "--prompt-tokens", "8", "--output-tokens", "4", "-r", "2", "--json")
    assert code == 0, err
    rep = json.loads(out)["report"]
    assert [r["metrics"] for r in rep["rows"]] == [json.loads(base_out)["report"]["metrics"], on_base["report"]["metrics"]]
    reports = store.get(json.loads(out)["digest"]).manifest.parents
    evals = {p.digest for p in reports if p.role.startswith("eval")}
    assert evals == {on_base["digest"], json.loads(base_out)["digest"]}, \
        "compare reused both evaluations, made with --log-samples (which changes no answer): none ran again"


def test_wrong_kind_is_refused_in_english_with_a_hint(run_cli: Any, store: Any, model: Any, adapter: Any) -> None:
    code, _, _err = run_cli("finetune", "--model", f"sha256:{adapter.digest}", "--data", "x", "--max-steps", "1")
    assert code == 1
    from slmops.errors import RefError
    from slmops.stage.inputs import resolve_input

    with pytest.raises(RefError) as exc:
        resolve_input(f"sha256:{adapter.digest}", store, kind="model")
    msg = exc.value.message
    assert "is an adapter artifact" in msg and "this needs a model" in msg and "slmops adapters merge" in msg
    with pytest.raises(RefError, match="is a model artifact.*this needs a dataset"):
        resolve_input(f"sha256:{model.digest}", store, kind="dataset")
