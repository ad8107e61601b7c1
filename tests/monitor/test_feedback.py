"""Real traffic through a real server (``--log-content``) → ``data from-logs`` (scrubbing, lineage, cache) and ``monitor drift``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PII = [
    "My email is jane.doe@example.com, please reset my password",
    "Call me at +1 415-555-0132 about my refund",
    "Charge card 4111 1111 1111 1111 again, order ZX-77 secret",
]


def _chat(rec: dict[str, Any]) -> list[dict[str, str]]:
    return [m for m in rec["messages"] if m["role"] != "assistant"]


def _send(url: str, prompts: list[list[dict[str, str]]]) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    for messages in prompts:
        client.chat.completions.create(model="bot", messages=messages, max_tokens=1)


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A store with a tiny ``bot`` and a support-intent baseline; two request logs filled by real servers."""
    from slmops.data.synth import generate_task
    from slmops.serve import ServeConfig, create_app
    from slmops.stage.runner import run_stage
    from slmops.store import Store
    from slmops.testing.server import running_server
    from slmops.testing.tiny import tiny_model

    home = tmp_path_factory.mktemp("feedback_home")
    support = [_chat(r) for r in generate_task("support-intent", 60, seed=1)["train"]][:25]
    maths = [_chat(r) for r in generate_task("arithmetic", 60, seed=1)["train"]][:25]
    with Store(home) as store:
        model = tiny_model("llama", store=store, name="bot")
        run_stage("data.synth", {}, {"task": "support-intent", "n": 150, "seed": 0}, store=store, output_name="support")
        logs = {label: home / f"{label}.db" for label in ("support", "maths", "mixed")}
        for label, prompts in (("support", support), ("mixed", [[{"role": "user", "content": p}] for p in PII]), ("maths", maths)):
            if label == "mixed":  # the support traffic plus a few requests carrying personal data
                shutil.copy(logs["support"], logs["mixed"])
            app = create_app(ServeConfig(models=["bot"], log_content=True, request_log=logs[label]), store=store)
            with running_server(app) as url:
                _send(url, prompts)
                app.state.service.requestlog.flush()
    yield {"home": home, "model": model, "logs": logs, "support_url_prompts": support}


@pytest.fixture
def home(traffic: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SLMOPS_HOME", str(traffic["home"]))
    return traffic["home"]


def test_from_logs_scrubs_and_points_at_the_model(traffic: dict[str, Any], home: Path, cli: Any) -> None:
    from slmops.data.io import read_dataset
    from slmops.store import Store

    log = str(traffic["logs"]["mixed"])
    res = cli("data", "from-logs", "--model", "bot", "--name", "next", "--log-db", log, "--since", "1h",
              "--scrub", r"ZX-\d+", "--json")
    assert res.code == 0, res.err
    d = res.json
    assert d["kind"] == "dataset" and d["name"] == "next:1" and not d["cached"]
    distinct = {json.dumps(m, sort_keys=True) for m in traffic["support_url_prompts"]}
    assert d["metrics"]["log_rows"] == 28 and d["metrics"]["records"] == len(distinct) + 3  # deduplicated
    with Store(home) as store:
        art = store.get(d["digest"])
        recs = read_dataset(art)
        assert {r.kind for r in recs} == {"prompt"}
        assert store.parents(d["digest"]) == [(traffic["model"].digest, "model")]
    text = Path(art.path / "data.jsonl").read_text()
    for secret in ("jane.doe@example.com", "415-555-0132", "4111 1111 1111 1111", "ZX-77"):
        assert secret not in text
    for token in ("[EMAIL]", "[PHONE]", "[CARD]", "[REDACTED]"):
        assert token in text
    assert d["meta"]["scrubbed"] == {"email": 1, "phone": 1, "card": 1, "user0": 1}
    # same traffic → cache hit; the first support prompt survives intact
    again = cli("data", "from-logs", "--model", "bot", "--log-db", log, "--since", "1h", "--scrub", r"ZX-\d+", "--json").json
    assert again["cached"] and again["digest"] == d["digest"]
    first = traffic["support_url_prompts"][0]
    assert recs[0].messages[-1].content == first[-1]["content"]


def test_from_logs_new_traffic_misses_the_cache_and_errors_are_clear(traffic: dict[str, Any], home: Path, cli: Any, tmp_path: Path) -> None:
    import shutil
    import sqlite3
    import time

    db = tmp_path / "copy.db"
    shutil.copy(traffic["logs"]["maths"], db)
    first = cli("data", "from-logs", "--model", "bot", "--log-db", str(db), "--json").json
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO requests(ts, status, digest, route, prompt) VALUES (?, 200, ?, 'completions', ?)",
                 (time.time(), traffic["model"].digest, json.dumps("a new prompt")))
    conn.commit()
    conn.close()
    second = cli("data", "from-logs", "--model", "bot", "--log-db", str(db), "--json").json
    assert not second["cached"] and second["metrics"]["records"] == first["metrics"]["records"] + 1
    bad = cli("data", "from-logs", "--model", "bot", "--log-db", str(db), "--scrub", "(")
    assert bad.code == 1 and "--scrub" in bad.err
    none = cli("data", "from-logs", "--model", "bot", "--log-db", str(tmp_path / "missing.db"))
    assert none.code == 1 and "--log-content" in none.err
    judged = cli("data", "from-logs", "--model", "bot", "--log-db", str(db), "--min-judge-score", "0.5")
    assert judged.code == 1 and "monitor sample" in judged.err


def test_drift_same_task_is_stable_other_task_significant(traffic: dict[str, Any], home: Path, cli: Any) -> None:
    same = cli("monitor", "drift", "--model", "bot", "--baseline", "support", "--log-db", str(traffic["logs"]["support"]), "--json")
    assert same.code == 0, same.err
    s = same.json
    assert s["verdict"] == "stable", {k: v for k, v in s.items() if "psi" in k or "length" in k}
    assert s["live_prompts"] == 25 and s["baseline_prompts"] > 100
    shifted = cli("monitor", "drift", "--model", "bot", "--baseline", "support", "--log-db", str(traffic["logs"]["maths"]), "--json")
    assert shifted.code == 0, shifted.err
    m = shifted.json
    assert m["verdict"] == "significant" and m["score"] > 0.25 and m["score"] > 5 * s["score"]
    assert m["embedding_shift"] is not None or m["embedding"].startswith("skipped")
    human = cli("monitor", "drift", "--model", "bot", "--baseline", "support", "--log-db", str(traffic["logs"]["maths"]))
    assert human.code == 0 and "significant" in human.out and "token PSI" in human.out
    from slmops.store import Store

    with Store(home) as store:
        assert sorted(role for _, role in store.parents(m["report"])) == ["baseline", "model"]


def test_server_sets_the_drift_gauge(traffic: dict[str, Any], home: Path, tmp_path: Path) -> None:
    import time

    import httpx

    from slmops.serve import ServeConfig, create_app
    from slmops.store import Store
    from slmops.testing.server import running_server

    db = tmp_path / "requests.db"
    shutil.copy(traffic["logs"]["maths"], db)
    with Store(home) as store:
        cfg = ServeConfig(models=["bot"], log_content=True, request_log=db, drift_baseline="support", drift_every_s=0.5)
        app = create_app(cfg, store=store)
        with running_server(app) as url:
            deadline = time.monotonic() + 60
            while "bot" not in app.state.drift and time.monotonic() < deadline:
                time.sleep(0.2)
            text = httpx.get(f"{url}/metrics").text
    line = next(x for x in text.splitlines() if x.startswith('slmops_drift_score{model="bot"}'))
    assert float(line.split()[-1]) > 0.25 and app.state.drift["bot"]["verdict"] == "significant"


def test_sample_scores_with_a_judge_and_feeds_from_logs(traffic: dict[str, Any], home: Path, cli: Any, tmp_path: Path) -> None:
    from fastapi import FastAPI

    from slmops.testing.server import running_server

    judge = FastAPI()
    seen: list[str] = []

    @judge.post("/v1/chat/completions")
    def grade(body: dict[str, Any]) -> dict[str, Any]:
        seen.append(body["messages"][-1]["content"])
        return {"choices": [{"message": {"role": "assistant", "content": '{"relevance": 4, "coherence": 4}'}}]}  # 4/5 = 0.8

    db = tmp_path / "requests.db"
    shutil.copy(traffic["logs"]["support"], db)
    with running_server(judge) as url:
        res = cli("monitor", "sample", "--model", "bot", "--rate", "0.5", "--judge", f"{url}/v1", "--log-db", str(db), "--json")
        assert res.code == 0, res.err
        first = res.json
        assert 5 <= first["scored"] <= 25 and first["quality"] == pytest.approx(0.8) and len(seen) == first["scored"]
        again = cli("monitor", "sample", "--model", "bot", "--rate", "0.5", "--judge", f"{url}/v1", "--log-db", str(db), "--json").json
        assert again["newly_scored"] == 0 and again["scored"] == first["scored"]  # the same sample, not re-judged
    d = cli("data", "from-logs", "--model", "bot", "--log-db", str(db), "--min-judge-score", "0.7", "--json").json
    assert d["metrics"]["log_rows"] == first["scored"]

    # the offline scores are live on a server reading that log: /metrics and the dashboard show them
    import httpx

    from slmops.serve import ServeConfig, create_app
    from slmops.store import Store

    with Store(home) as store:
        app = create_app(ServeConfig(models=["bot"], request_log=db), store=store)
        with running_server(app) as url:
            text = httpx.get(f"{url}/metrics").text
            dash = httpx.get(f"{url}/dashboard/data").json()
    assert _gauge(text, "slmops_quality_score", 'model="bot",version="bot:1"') == pytest.approx(0.8)
    assert _gauge(text, "slmops_judged_requests", 'model="bot",version="bot:1"') == first["scored"]
    assert any(m["version"] == "bot:1" and m["quality"] == pytest.approx(0.8) for m in dash["models"])


def _gauge(text: str, name: str, labels: str) -> float:
    line = next(x for x in text.splitlines() if x.startswith(f"{name}{{{labels}}}"))
    return float(line.split()[-1])


def test_server_judges_sampled_traffic_itself(traffic: dict[str, Any], home: Path, tmp_path: Path) -> None:
    """`serve --judge URL`: new logged requests are scored by the judge in the background and the gauge follows."""
    import time

    import httpx
    from fastapi import FastAPI

    from slmops.serve import ServeConfig, create_app
    from slmops.store import Store
    from slmops.testing.server import running_server

    judge = FastAPI()

    @judge.post("/v1/chat/completions")
    def grade(body: dict[str, Any]) -> dict[str, Any]:
        assert body["model"] == "grader"
        return {"choices": [{"message": {"role": "assistant", "content": '{"relevance": 3, "coherence": 3}'}}]}  # 3/5 = 0.6

    db = tmp_path / "requests.db"
    with running_server(judge) as jurl, Store(home) as store:
        cfg = ServeConfig(models=["bot"], log_content=True, request_log=db, judge_url=f"{jurl}/v1", judge_model="grader",
                          judge_rate=1.0, judge_every_s=0.3)
        app = create_app(cfg, store=store)
        with running_server(app) as url:
            _send(url, traffic["support_url_prompts"][:6])
            app.state.service.requestlog.flush()
            deadline = time.monotonic() + 60
            while (app.state.quality.get("bot") or {}).get("scored", 0) < 6 and time.monotonic() < deadline:
                time.sleep(0.2)
            text = httpx.get(f"{url}/metrics").text
    assert app.state.quality["bot"]["scored"] == 6 and app.state.quality["bot"]["quality"] == pytest.approx(0.6)
    assert _gauge(text, "slmops_quality_score", 'model="bot",version="bot:1"') == pytest.approx(0.6)
