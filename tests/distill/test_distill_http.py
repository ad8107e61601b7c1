"""Stage 1 against a real HTTP teacher: answers, retries, Retry-After, rate limit, cache, failures, secrets."""

from __future__ import annotations

import json
from collections import deque

import pytest

from slmops.distill.config import GenerateConfig
from slmops.errors import SlmopsError
from slmops.stage import split_options
from slmops.stage.runner import run_stage


def _gen(store, prompts, cfg, **kw):
    config, options = split_options({**cfg, **kw}, GenerateConfig)
    return run_stage("distill.generate", {"prompts": prompts}, config, store=store, options=options)


def test_answers_become_a_chat_dataset_with_lineage(store, prompts, teacher_server, http_cfg, monkeypatch, caplog):
    monkeypatch.setenv("TEACHER_KEY", "sk-very-secret-123")
    caplog.set_level("DEBUG")
    r = _gen(store, prompts, http_cfg, api_key_env="TEACHER_KEY", price_prompt_per_1m=1.0, price_completion_per_1m=2.0)
    art = r.artifact
    assert art.kind == "dataset"
    assert [p.role for p in art.manifest.parents] == ["prompts"]
    m = art.manifest
    assert m.meta["teacher"] == {"type": "http", "base_url": teacher_server.url, "model": "teacher-x"}
    assert m.metrics["requests"] == 20 and m.metrics["success_ratio"] == 1.0
    assert m.metrics["kept"] == 20 - m.metrics.get("dropped_duplicate", 0)  # the synth prompts repeat a few texts
    assert m.metrics["prompt_tokens"] > 0 and m.metrics["cost_usd"] > 0
    from slmops.data.io import read_dataset

    train = read_dataset(art, "train")
    assert train[0].messages[-1].role == "assistant" and train[0].completion.startswith("answer to: ")
    assert train[0].label is not None and train[0].meta["teacher"]["finish_reason"] == "stop"
    # the key went to the server, and nowhere else
    assert all(e["authorization"] == "Bearer sk-very-secret-123" for e in teacher_server.script.log)
    stored = "".join(p.read_text(errors="replace") for p in art.path.rglob("*") if p.is_file())
    assert "sk-very-secret" not in stored and "sk-very-secret" not in caplog.text
    assert m.meta["run_options"]["api_key_env"] == "TEACHER_KEY"
    # rerun: a cache hit at the runner
    assert _gen(store, prompts, http_cfg, api_key_env="TEACHER_KEY").cached


def test_retries_429_500_drop_slow_and_garbage(store, prompts, teacher_server, http_cfg):
    s = teacher_server.script
    first = "Where is my order"  # not needed: per-prompt scripting below uses exact prompts
    from slmops.data.io import read_dataset

    texts = [r.messages[-1].content for r in read_dataset(prompts, "train")]
    s.per_prompt[texts[0]] = deque(["429:0.3", "ok"])
    s.per_prompt[texts[1]] = deque(["500", "503", "ok"])
    s.per_prompt[texts[2]] = deque(["drop", "ok"])
    s.per_prompt[texts[3]] = deque(["slow:3", "ok"])
    s.per_prompt[texts[4]] = deque(["garbage", "ok"])
    r = _gen(store, prompts, http_cfg, request_timeout_s=0.5, concurrency=4, keep_run_dir=True)
    assert r.artifact.manifest.metrics["answered"] == 20, first
    stats = r.artifact.manifest.meta["last_process"]
    assert stats["retries"] == 6 and stats["failed"] == 0
    assert set(stats["errors"]) >= {"HTTP 429", "HTTP 500", "HTTP 503", "timeout", "malformed response (not a chat completion)"}
    assert any(k.startswith("connection error") for k in stats["errors"])
    # Retry-After: 0.3 was honoured before asking again
    times = [e["t"] for e in s.log if e["prompt"] == texts[0]]
    assert times[1] - times[0] >= 0.29


def test_rate_limit_spaces_requests(store, prompts, teacher_server, http_cfg):
    _gen(store, prompts, http_cfg, rpm=600, concurrency=4, splits=["train"], validation={"drop_duplicates": False})
    log = teacher_server.script.log
    assert len(log) == 15
    # a bucket of 10/s with a burst of 10: the first 10 at once, then one every 0.1 s
    assert log[-1]["t"] - log[0]["t"] >= 0.45


def test_below_min_success_ratio_fails_then_resumes(store, prompts, teacher_server, http_cfg):
    s = teacher_server.script
    s.queue.extend(["500"] * 12)  # 6 requests fail twice (1 retry each)
    with pytest.raises(SlmopsError, match="below --min-success-ratio"):
        _gen(store, prompts, http_cfg, max_retries=1, concurrency=1)
    calls = len(s.log)
    assert calls == 12 + 14  # 6 failing requests x2, 14 good
    r = _gen(store, prompts, http_cfg, max_retries=1, concurrency=1)
    assert r.artifact.manifest.metrics["answered"] == 20
    failed = {e["prompt"] for e in s.log[:calls] if e["behaviour"] == "500"}
    again = [e["prompt"] for e in s.log[calls:]]
    assert again and set(again) <= failed and len(again) <= 6  # only the failed ones were asked again (equal prompts share a cache entry)


def test_fatal_status_stops_the_run(store, prompts, teacher_server, http_cfg, monkeypatch):
    monkeypatch.setenv("K", "sk-bad")
    teacher_server.script.queue.extend(["401"] * 50)
    with pytest.raises(SlmopsError, match="refused the API key") as exc:
        _gen(store, prompts, http_cfg, api_key_env="K", concurrency=1)
    assert "sk-bad" not in str(exc.value)
    assert len(teacher_server.script.log) == 1


def test_response_cache_serves_a_new_run(store, prompts, teacher_server, http_cfg, slmops_home):
    _gen(store, prompts, http_cfg)
    n = len(teacher_server.script.log)
    r = _gen(store, prompts, http_cfg, validation={"drop_duplicates": False})  # another run (new key), same requests
    assert not r.cached and len(teacher_server.script.log) == n
    assert r.artifact.manifest.metrics["cached_answers"] == 20
    assert any((slmops_home / "cache" / "teacher").rglob("*.json"))


def test_logprobs_are_kept_compactly(store, prompts, teacher_server, http_cfg):
    r = _gen(store, prompts, http_cfg, top_logprobs=3, splits=["train"])
    rows = [json.loads(x) for x in (r.artifact.path / "topk" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == r.artifact.manifest.metrics["train"]
    row = rows[0]
    assert row["row"] == 0 and row["tokens"][0] == "answer" and len(row["top_lp"][0]) == 3 and row["lp"][0] == -0.1
    assert teacher_server.script.log[0]["body"]["top_logprobs"] == 3
