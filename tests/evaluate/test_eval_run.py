"""The eval stage end to end: a local tiny model, a server whose answers we control, resume, judge, API keys, lineage."""

from __future__ import annotations

import json
from typing import Any

import pytest

from slmops.errors import ConfigError, SlmopsError
from slmops.evaluate.config import EvalConfig
from slmops.evaluate.report import load_report
from slmops.evaluate.run import evaluate
from slmops.evaluate.targets import HttpTarget, LocalTarget, Reply, normalize_base_url
from slmops.stage import RunOptions
from slmops.stage.runner import prepare_stage, run_stage


def test_local_model_report_is_linked_and_cached(store: Any, model: Any, intent_data: Any) -> None:
    cfg = {"metrics": ["exact_match", "token_f1", "rouge_l", "bleu", "accuracy", "json_valid", "perplexity"], "limit": 4,
           "max_tokens": 6, "log_samples": True}
    r = run_stage("eval", {"model": model, "data": intent_data}, cfg, store=store, output_name="tiny-eval")
    art = r.artifact
    assert art.kind == "report" and not r.cached
    assert {p.role: p.digest for p in art.manifest.parents} == {"model": model.digest, "data": intent_data.digest}
    rep = load_report(art)
    assert rep["counts"]["examples"] == 4 and rep["counts"]["errors"] == 0 and rep["data"]["split"] == "test"
    assert set(rep["metrics"]) == set(cfg["metrics"])
    assert rep["metrics"]["perplexity"] > 1 and 0 <= rep["metrics"]["token_f1"] <= 1
    assert rep["target"]["kind"] == "local" and rep["target"]["parameters"] == model.manifest.metrics["parameters"]
    assert art.manifest.metrics["examples"] == 4 and "accuracy" in art.manifest.metrics
    samples = [json.loads(x) for x in art.file("samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all("scores" in s and s["output"] is not None for s in samples)
    assert (art.path / "report.md").read_text().startswith("# Evaluation of")
    assert run_stage("eval", {"model": model, "data": intent_data}, cfg, store=store).cached
    assert store.children(model.digest) == [(art.digest, "model")]


def test_server_with_known_answers_scores_one(store: Any, intent_data: Any, label_server: str) -> None:
    cfg = {"metrics": ["accuracy", "exact_match"], "url": label_server}
    art = run_stage("eval", {"data": intent_data}, cfg, store=store, options={"batch_size": 4}).artifact
    rep = load_report(art)
    assert rep["metrics"] == {"accuracy": 1.0, "exact_match": 1.0}
    assert rep["target"] == {"kind": "http", "label": "labeller", "url": label_server, "model": "labeller"}
    assert [p.role for p in art.manifest.parents] == ["data"]  # a URL has no model artifact: linked to the data only
    assert art.manifest.meta["target"]["url"] == label_server


def test_api_key_comes_from_env_and_is_never_stored(store: Any, intent_data: Any, label_server: str, monkeypatch: Any) -> None:
    secret = "sk-test-DO-NOT-STORE-123"
    monkeypatch.setenv("EVAL_TEST_KEY", secret)
    art = run_stage("eval", {"data": intent_data}, {"metrics": ["accuracy"], "url": label_server, "api_key_env": "EVAL_TEST_KEY",
                                                     "limit": 2, "log_samples": True}, store=store).artifact
    for f in art.path.rglob("*"):
        if f.is_file():
            assert secret not in f.read_text(errors="replace")
    assert art.manifest.stage is not None and art.manifest.stage.config["api_key_env"] == "EVAL_TEST_KEY"
    monkeypatch.delenv("EVAL_TEST_KEY")
    with pytest.raises(ConfigError, match="--api-key-env EVAL_TEST_KEY"):
        run_stage("eval", {"data": intent_data}, {"metrics": ["accuracy"], "url": label_server, "api_key_env": "EVAL_TEST_KEY",
                                                  "limit": 3}, store=store)


def test_urls_are_normalised_and_credentials_refused() -> None:
    assert normalize_base_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000/v1"
    assert normalize_base_url("http://h:1/v1/chat/completions") == "http://h:1/v1"
    assert normalize_base_url("https://api.example.com/v1/") == "https://api.example.com/v1"
    with pytest.raises(ConfigError, match="credentials"):
        normalize_base_url("http://user:pw@h/v1")
    with pytest.raises(ConfigError, match="--url"):
        normalize_base_url("ftp://h")


def test_unreachable_server_fails_fast(store: Any, intent_data: Any) -> None:
    with pytest.raises(SlmopsError, match="cannot reach"):
        run_stage("eval", {"data": intent_data}, {"url": "http://127.0.0.1:9/v1"}, store=store, options={"request_timeout_s": 2})


def test_metric_needs_are_checked(store: Any, intent_data: Any, label_server: str) -> None:
    with pytest.raises(ConfigError, match="perplexity needs a local runtime"):
        run_stage("eval", {"data": intent_data}, {"metrics": ["perplexity"], "url": label_server}, store=store)
    with pytest.raises(ConfigError, match="unknown metric"):
        run_stage("eval", {"data": intent_data}, {"metrics": ["f2"], "url": label_server}, store=store)
    with pytest.raises(ConfigError, match="judge_url"):
        EvalConfig(metrics=["judge"]) if False else run_stage("eval", {"data": intent_data}, {"metrics": ["judge"], "url": label_server},
                                                              store=store)
    prompts = run_stage("data.synth", {}, {"task": "support-intent", "n": 20, "prompts_only": True}, store=store).artifact
    with pytest.raises(ConfigError, match="needs reference answers"):
        run_stage("eval", {"data": prompts}, {"metrics": ["exact_match"], "url": label_server}, store=store)


class Flaky:
    """A target that answers with the label script and breaks (like a crash) after ``fail_after`` answers."""

    kind, concurrency, runtime = "local", 1, None

    def __init__(self, fail_after: int | None = None) -> None:
        from evalkit import label_script

        self.script, self.fail_after, self.calls, self.label = label_script, fail_after, 0, "flaky"

    def chat(self, messages: list[dict[str, Any]], **kw: Any) -> Reply:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        return Reply(self.script(messages), 0.01)

    def describe(self) -> dict[str, Any]:
        return {"kind": "local", "label": self.label}

    def close(self) -> None:
        pass


def test_interrupted_run_resumes_where_it_stopped(tmp_path: Any, intent_data: Any) -> None:
    from slmops.data.io import read_dataset

    records = read_dataset(intent_data, "train")[:10]
    cfg, opts = EvalConfig(metrics=["accuracy"]), RunOptions(batch_size=3)
    with pytest.raises(KeyboardInterrupt):
        evaluate(Flaky(fail_after=7), records, cfg, options=opts, workdir=tmp_path)  # type: ignore[arg-type]
    lines = (tmp_path / "generate.jsonl").read_text().splitlines()
    assert len(lines) == 6  # two whole batches were made durable before the crash
    with open(tmp_path / "generate.jsonl", "a") as f:
        f.write('{"index": 6, "outp')  # a torn line from a crash mid-write
    again = Flaky()
    res = evaluate(again, records, cfg, options=opts, workdir=tmp_path)  # type: ignore[arg-type]
    assert again.calls == 4 and res.counts["resumed"] == 6
    assert res.metrics["accuracy"] == 1.0 and len(res.samples) == 10


def test_judge_through_an_openai_compatible_endpoint(intent_data: Any, tiny_rt: Any) -> None:
    from oai_server import make_app, serve

    from slmops.data.io import read_dataset

    seen: list[str] = []

    def verdict(messages: list[dict[str, Any]]) -> str:
        seen.append(messages[-1]["content"])
        return '{"relevance": 4, "coherence": 2}' if "refund" in messages[-1]["content"].lower() else "Relevance: 2\nCoherence: 5"

    records = read_dataset(intent_data, "test")[:4]
    with serve(make_app(script=verdict, model_id="judge")) as url:
        cfg = EvalConfig(metrics=["judge", "exact_match"], judge_url=url, max_tokens=4)
        res = evaluate(LocalTarget(tiny_rt, "tiny"), records, cfg)
    assert len(seen) == 4 and all("## Answer to evaluate" in s for s in seen)
    refunds = sum("refund" in s.lower() for s in seen)
    assert res.metrics["judge_relevance"] == pytest.approx((4 * refunds + 2 * (4 - refunds)) / 4)
    assert res.metrics["judge_coherence"] == pytest.approx((2 * refunds + 5 * (4 - refunds)) / 4)
    assert res.counts["judge_unparsed"] == 0


def test_http_target_streams_with_time_to_first_token(label_server: str) -> None:
    t = HttpTarget(label_server)
    try:
        assert t.model == "labeller" and t.models() == ["labeller"]
        r = t.chat([{"role": "user", "content": "Please cancel order #12345."}], stream=True)
        assert r.text == "cancel_order" and r.ttft_s is not None and r.completion_tokens == 1
        plain = t.chat([{"role": "user", "content": "Please cancel order #12345."}])
        assert plain.text == "cancel_order" and plain.ttft_s is None
    finally:
        t.close()


def test_our_server_answers_like_the_local_runtime(store: Any, model: Any, intent_data: Any, tiny_server: str) -> None:
    """Greedy answers through ``slmops serve`` (over HTTP) equal the local runtime's, example by example."""
    cfg = {"metrics": ["exact_match"], "limit": 3, "max_tokens": 6, "log_samples": True}
    local = run_stage("eval", {"model": model, "data": intent_data}, cfg, store=store).artifact
    remote = run_stage("eval", {"data": intent_data}, {**cfg, "url": tiny_server}, store=store).artifact
    outs = [[json.loads(x)["output"] for x in a.file("samples.jsonl").read_text().splitlines()] for a in (local, remote)]
    assert outs[0] == outs[1] and len(outs[0]) == 3
    assert load_report(remote)["target"]["model"] == "tiny-llama"


def test_a_metric_nothing_could_score_is_reported_as_none(intent_data: Any) -> None:
    from evalkit import label_script

    from slmops.data.io import read_dataset

    class Script(Flaky):
        pass

    res = evaluate(Script(), read_dataset(intent_data, "test")[:3], EvalConfig(metrics=["accuracy", "json_field_match"]))  # type: ignore[arg-type]
    assert res.metrics == {"accuracy": 1.0, "json_field_match": None}  # intent answers are not JSON: no field to compare
    assert label_script([{"role": "user", "content": "I forgot my password."}]) == "reset_password"


def test_interrupted_eval_keeps_its_progress_through_gc(store: Any, intent_data: Any, label_server: str) -> None:
    """The answers so far live in the run's work dir (``runs/<cache key>``): gc during or after the crash keeps them."""
    from slmops import progress

    cfg = {"metrics": ["accuracy"], "url": label_server, "limit": 9}
    key = prepare_stage("eval", {"data": intent_data}, cfg)[2]
    saved = store.home / "runs" / key / "progress" / "generate.jsonl"

    class CrashAfterFirstBatch:
        def start(self, task_id: int, description: str, total: float | None) -> None: ...
        def finish(self, task_id: int) -> None: ...

        def update(self, task_id: int, completed: float, fields: dict[str, Any]) -> None:
            if completed >= 3:
                store.gc()  # while the run is alive
                assert saved.is_file()
                raise KeyboardInterrupt

    with progress.use_sink(CrashAfterFirstBatch()), pytest.raises(KeyboardInterrupt):
        run_stage("eval", {"data": intent_data}, cfg, store=store, options={"batch_size": 3})
    store.gc()  # after the crash
    assert len(saved.read_text().splitlines()) == 3
    # other run options (a bigger batch) are the same run: it resumes, then removes its work dir
    art = run_stage("eval", {"data": intent_data}, cfg, store=store, options={"batch_size": 4}).artifact
    assert load_report(art)["counts"]["resumed"] == 3 and load_report(art)["metrics"]["accuracy"] == 1.0
    assert art.manifest.meta["run_options"] == {"batch_size": 4}
    assert not saved.parent.parent.exists()
    with pytest.raises(ConfigError, match="--resume: no saved answers"):
        run_stage("eval", {"data": intent_data}, cfg, store=store, force=True, options={"resume": "always"})
