"""The shipped recipes besides the quickstart, run end to end at a small scale through `slmops run`.

distill-from-api labels prompts with a real OpenAI-compatible teacher (our own server, with an API
key taken from the environment); multi-adapter trains three adapters and a combination, then serves
them side by side; quantize-sweep exports four variants and lets its KL and size gates pick one.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TEACHER = ["n=120", "teacher_size=tiny", "teacher_epochs=10"]  # the quickstart's teacher, as in test_quickstart.py


def _sets(values: list[str]) -> list[str]:
    return [x for v in values for x in ("--set", v)]


def _steps(r: Any) -> dict[str, dict[str, Any]]:
    return {s["step"]: s for s in r.json["steps"]}


def _records(artifact: Any, split: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in artifact.file(f"{split}.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]


def _served_requests(url: str, key: str, model: str) -> float:
    """Successful chat requests the server counted for ``model`` (its Prometheus metrics, read with the key)."""
    import httpx

    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=30).text
    pattern = re.compile(r'^slmops_requests_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$', re.MULTILINE)
    return sum(float(m["value"]) for m in pattern.finditer(text)
               if f'model="{model}"' in m["labels"] and 'status="200"' in m["labels"] and "chat" in m["labels"])


def test_distill_from_api_labels_with_a_served_teacher_then_reruns_without_it(cli, store, slmops_home: Path, monkeypatch) -> None:
    from pydantic import SecretStr

    from slmops.serve import ServeConfig, create_app
    from slmops.testing.server import running_server

    # the teacher: the quickstart's own teacher step at a reduced size, served by `slmops serve`'s app with a key
    r = cli("run", str(EXAMPLES / "quickstart.yaml"), "--until", "teacher", "--json", *_sets(TEACHER))
    assert r.code == 0, r.err
    key = secrets.token_hex(16)
    app = create_app(ServeConfig(models=["quickstart-teacher"], api_key=SecretStr(key)), store=store)
    recipe = str(EXAMPLES / "distill-from-api.yaml")
    small = ["n=120", "rpm=null", "student_epochs=4", "min_accuracy=0"]
    with running_server(app) as url:
        args = ["run", recipe, "--json", *_sets([f"base_url={url}/v1", "teacher_model=quickstart-teacher", *small])]
        monkeypatch.delenv("TEACHER_API_KEY", raising=False)
        r = cli(*args)
        assert r.code == 1 and "TEACHER_API_KEY" in r.err, "the key comes only from the variable the recipe names"
        monkeypatch.setenv("TEACHER_API_KEY", "not-" + key)
        r = cli(*args)
        assert r.code == 1 and "refused the API key" in r.err, r.err
        assert _served_requests(url, key, "quickstart-teacher") == 0

        monkeypatch.setenv("TEACHER_API_KEY", key)
        r = cli(*args)
        assert r.code == 0, r.err
        served = _served_requests(url, key, "quickstart-teacher")

    steps = _steps(r)
    labels = steps["labels"]["metrics"]
    prompts = steps["prompts"]["metrics"]
    assert labels["prompts"] == prompts["train"] + prompts["validation"] and labels["failed"] == 0 and labels["success_ratio"] == 1.0
    assert labels["requests"] > 0 and served == labels["requests"] - labels.get("cached_answers", 0), "every answer came over HTTP"
    data = store.get(steps["data"]["digest"])
    intents = {rec["messages"][-1]["content"] for rec in _records(data, "train")}
    kept = _records(store.get(steps["labels"]["digest"]), "train")
    assert len(kept) == labels["train"] > 0
    assert {rec["messages"][-1]["content"] for rec in kept} <= intents, "classification answers are validated against the intents"
    assert steps["student"]["artifact_kind"] == "model" and store.lookup("support-student").digest == steps["student"]["digest"]
    assert set(store.parents(steps["student"]["digest"])) == {(steps["labels"]["digest"], "data"), (steps["student_base"]["digest"], "student")}
    evaluated = steps["eval"]
    assert evaluated["metrics"]["examples"] == data.manifest.metrics["test"] and 0 <= evaluated["metrics"]["accuracy"] <= 1
    assert evaluated["gates"][0]["gate"] == "accuracy>=0" and evaluated["gates"][0]["passed"]
    # the key went out in the Authorization header and nowhere else: no manifest, cache, registry or log holds it
    assert not [p for p in slmops_home.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]

    # warm re-run with the teacher gone: every step is a cache hit, nothing is asked
    again = cli(*args)
    assert again.code == 0, again.err
    assert {s["step"]: s["status"] for s in again.json["steps"]} == dict.fromkeys(steps, "cached")
    assert [s["digest"] for s in again.json["steps"]] == [s["digest"] for s in r.json["steps"]]
    # the gate takes its threshold from a var: one no model can reach stops the (cached) run with exit 3
    failed = cli(*args, "--set", "min_accuracy=1.01")
    assert failed.code == 3 and "gate accuracy>=1.01 failed at step 'eval'" in failed.err, (failed.code, failed.err)


def test_multi_adapter_trains_adapters_on_one_base_and_serves_them_side_by_side(cli, store) -> None:
    import openai

    from slmops.serve import ServeConfig, create_app
    from slmops.testing.server import running_server

    r = cli("run", str(EXAMPLES / "multi-adapter.yaml"), "--json")  # the defaults are already small (60 steps per adapter)
    assert r.code == 0, r.err
    steps = _steps(r)
    base = steps["base"]["digest"]
    for step in ("intent_adapter", "json_adapter", "math_adapter", "combined"):
        assert steps[step]["artifact_kind"] == "adapter"
        assert (base, "model") in store.parents(steps[step]["digest"]), f"{step} is an adapter of the one base"
    assert steps["math_adapter"]["kind"] == "finetune.dora"
    assert steps["smoke"]["detail"].startswith("served multi-intent at http://127.0.0.1:")

    intents = {rec["messages"][-1]["content"] for rec in _records(store.get(steps["intents"]["digest"]), "train")}
    question = _records(store.get(steps["intents"]["digest"]), "test")[0]["messages"]
    ids = ["multi-base", "multi-intent", "multi-json", "multi-math", "multi-combined"]
    app = create_app(ServeConfig(models=ids, log_requests=False), store=store)
    with running_server(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        assert {m.id for m in client.models.list().data} >= set(ids)

        def ask(model: str) -> str:
            reply = client.chat.completions.create(model=model, messages=question, max_tokens=12, temperature=0)
            return reply.choices[0].message.content or ""

        alone = {m: ask(m) for m in ids}
        together: dict[str, str] = {}
        start = threading.Barrier(len(ids))

        def run(m: str) -> None:
            start.wait()
            together[m] = ask(m)

        threads = [threading.Thread(target=run, args=(m,)) for m in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    # one question, each id answers in its own task's format: base and three adapters all differ
    assert alone["multi-intent"].strip() in intents, alone
    assert alone["multi-json"].lstrip().startswith("{"), alone
    assert re.fullmatch(r"\s*-?\d+(\.\d+)?\s*", alone["multi-math"]), alone
    assert len({alone[m] for m in ids[:4]}) == 4, alone
    assert together == alone, "concurrent requests (batched across adapters, DoRA included) answer as they do alone"


def test_quantize_sweep_gates_choose_the_variant_and_an_impossible_budget_exits_3(cli, store) -> None:
    recipe = str(EXAMPLES / "quantize-sweep.yaml")
    small = ["size=tiny", "n=120", "epochs=1", "parity_texts=4", "bench_runs=1", "isolate=false"]
    r = cli("run", recipe, "--json", *_sets(small))
    assert r.code == 0, r.err
    steps = _steps(r)
    sweep = steps["sweep"]
    assert sweep["metrics"]["candidates"] == 4 and sweep["gates"] == [{**sweep["gates"][0], "gate": "passing>=1", "passed": True}]
    rows = {row["target"]: row for row in store.get(sweep["digest"]).manifest.meta["rows"]}
    assert set(rows) == {"onnx:int4", "onnx:int8", "gguf:q4_k_m", "gguf:q8_0"} and all(row["status"] == "ok" for row in rows.values())
    chosen = rows[sweep["metrics"]["chosen"]]
    assert chosen["passed"] and chosen["kl_mean"] <= 0.05 and chosen["size_bytes"] <= 500e6
    assert chosen["size_bytes"] == min(row["size_bytes"] for row in rows.values() if row["passed"])
    prod = store.lookup("sweep", alias="prod")
    assert prod.digest == chosen["digest"] == sweep["metrics"]["chosen_digest"] and prod.kind in ("gguf", "onnx")
    assert steps["smoke"]["detail"].startswith("served sweep@prod at http://127.0.0.1:")

    # a tighter KL gate rules the winner out: the next smallest variant under the cut is chosen and aliased
    below = sorted(row["kl_mean"] for row in rows.values() if row["kl_mean"] < chosen["kl_mean"])
    assert below, f"an 8-bit variant should be closer to the model than the smallest one: {rows}"
    cut = (below[-1] * chosen["kl_mean"]) ** 0.5  # between the winner's KL and the next lower one
    expected = min((row for row in rows.values() if row["kl_mean"] <= cut), key=lambda row: row["size_bytes"])
    r = cli("run", recipe, "--json", *_sets([*small, f"max_kl={cut!r}"]))
    assert r.code == 0, r.err
    assert _steps(r)["sweep"]["metrics"]["chosen"] == expected["target"] != chosen["target"]
    assert store.lookup("sweep", alias="prod").digest == expected["digest"]
    assert {s["step"]: s["status"] for s in r.json["steps"]}["model"] == "cached"

    # a memory budget below the smallest variant: nothing passes, the recipe's gate stops the run with exit 3
    before = store.lookup("sweep", alias="prod").digest
    budget = min(row["size_bytes"] for row in rows.values()) - 1
    r = cli("run", recipe, "--json", *_sets([*small, f"max_size={budget}"]))
    assert r.code == 3, (r.code, r.err)
    assert "gate passing>=1 failed at step 'sweep'" in r.err and "passing = 0" in r.err
    assert store.lookup("sweep", alias="prod").digest == before, "a failed gate moves no alias"


@pytest.mark.parametrize("name", ["distill-from-api", "multi-adapter", "quantize-sweep"])
def test_recipe_dry_run_lists_every_step(cli, name: str) -> None:
    r = cli("run", str(EXAMPLES / f"{name}.yaml"), "--dry-run", "--json")
    assert r.code == 0, r.err
    assert {s["status"] for s in r.json["steps"]} == {"planned"}
