"""Validation of teacher answers: every reason, the report, chain-of-thought extraction, task types."""

from __future__ import annotations

import json
from collections import deque

import pytest

from slmops.distill.config import GenerateConfig
from slmops.distill.prompting import clean_answer, split_final_answer, teacher_messages
from slmops.distill.validate import ValidationConfig, Validator
from slmops.errors import ConfigError
from slmops.stage import split_options
from slmops.stage.runner import run_stage


def test_validator_reasons():
    v = Validator(
        ValidationConfig(max_chars=20, regex=r"^[a-z_]+$"), task="classification", labels={"refund": "refund", "billing": "billing"}
    )
    assert v.check("refund", prompt="p1") is None
    assert v.check("refund", prompt="p1") == "duplicate"
    assert v.check("refund", prompt="p2") is None
    assert v.check("billing", prompt="p1", finish_reason="length") == "truncated"
    assert v.check("   ", prompt="p1") == "empty"
    assert v.check("I'm sorry, but I can't help with that.", prompt="p1") == "refusal"
    assert v.check("As an AI language model, refund", prompt="p3") == "refusal"
    assert v.check("a much longer answer than twenty characters", prompt="p1") == "too_long"
    assert v.check("shipping", prompt="p1") == "not_a_label"
    j = Validator(
        ValidationConfig(json_schema={"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}),
        task="extraction",
    )
    assert j.check('{"city": "Oslo"}', prompt="a") is None
    assert j.check("city: Oslo", prompt="b") == "invalid_json"
    assert j.check('{"town": "Oslo"}', prompt="c") == "schema"
    m = Validator(ValidationConfig(), task="math")
    assert m.check("42", prompt="x") is None and m.check("forty-two", prompt="y") == "not_a_number"
    assert Validator(ValidationConfig(min_chars=5)).check("abc", prompt="z") == "too_short"


def test_bad_settings_are_config_errors():
    from slmops.stage import get_stage

    st = get_stage("distill.generate")
    with pytest.raises(ConfigError, match="regex"):
        st.make_config({"base_url": "http://x/v1", "model": "m", "validation": {"regex": "("}})
    with pytest.raises(ConfigError, match="credentials"):
        st.make_config({"base_url": "http://u:sk-1@x/v1", "model": "m"})
    with pytest.raises(ConfigError, match="credentials"):
        st.make_config({"base_url": "http://x/v1?api-key=sk-1", "model": "m"})
    with pytest.raises(ConfigError, match="--model is required"):
        st.make_config({"base_url": "http://x/v1"})
    with pytest.raises(ConfigError, match="keyword"):
        st.make_config({"base_url": "http://x/v1", "model": "m", "validation": {"json_schema": {"oneOf": []}}})


def test_chain_of_thought_helpers():
    assert split_final_answer("Step 1: think.\nFinal answer: refund") == ("refund", "Step 1: think.")
    assert split_final_answer("final answer: a\n...\nFINAL ANSWER:  b ") == ("b", "final answer: a\n...")
    assert split_final_answer("no marker")[0] is None
    msgs = teacher_messages([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], chain_of_thought=True)
    assert msgs[0]["content"].startswith("S\n\nThink step by step") and msgs[1] == {"role": "user", "content": "U"}
    assert clean_answer('```json\n{"a": 1}\n```', "extraction") == '{"a": 1}'
    assert clean_answer("Refund.", "classification", {"refund": "refund"}) == "refund"


def test_generate_drops_bad_answers_and_reports_why(store, prompts, teacher_server, http_cfg):
    from slmops.data.io import read_dataset

    texts = [r.messages[-1].content for r in read_dataset(prompts, "train")]
    s = teacher_server.script
    canned = {
        texts[0]: "Let me see.\nFinal answer: refund",
        texts[1]: "I think it is billing",
        texts[2]: "Final answer: ",
        texts[3]: "I'm sorry, but I can't help with that.\nFinal answer: none",
        texts[4]: "Final answer: Billing.",
    }
    s.answer = lambda body: canned.get(body["messages"][-1]["content"], "Reasoning...\nFinal answer: cancel_order")
    s.per_prompt[texts[5]] = deque(["length"])
    endpoint, options = split_options(http_cfg, GenerateConfig)
    r = run_stage(
        "distill.generate",
        {"prompts": prompts},
        {**endpoint, "task": "classification", "chain_of_thought": True, "splits": ["train"], "limit": 8, "samples": 2, "temperature": 0.7},
        store=store,
        options=options,
    )
    report = json.loads((r.artifact.path / "validation_report.json").read_text())
    by = report["dropped_by_reason"]
    assert by["no_final_answer"] == 2 and by["truncated"] == 1 and by["empty"] == 2 and by["refusal"] == 2
    assert by["duplicate"] >= 3  # two samples with the same answer
    assert report["total"] == 16 and report["kept"] + report["dropped"] == 16
    assert "Final answer" in s.log[0]["body"]["messages"][0]["content"]  # the CoT instruction went to the teacher
    rows = read_dataset(r.artifact, "train")
    by_prompt = {x.messages[-2].content: x for x in rows}
    assert by_prompt[texts[0]].completion == "refund" and by_prompt[texts[0]].meta["teacher"]["reasoning"] == "Let me see."
    assert by_prompt[texts[4]].completion == "billing"  # the label as the dataset spells it
    assert "Final answer" not in by_prompt[texts[0]].messages[0].content  # the student keeps the plain system prompt
    dropped = [json.loads(x) for x in (r.artifact.path / "dropped.jsonl").read_text().splitlines()]
    assert {d["reason"] for d in dropped} >= {"no_final_answer", "truncated", "empty", "refusal", "duplicate"}


def test_run_options_stay_out_of_the_cache_key(prompts):
    from slmops.stage import cache_key, get_stage, make_options

    st = get_stage("distill.generate")
    base = {"base_url": "http://127.0.0.1:9/v1", "model": "m"}
    a, a_opts = split_options({**base, "concurrency": 1, "rpm": 60, "api_key_env": "A", "request_timeout_s": 5}, GenerateConfig)
    b, _ = split_options({**base, "concurrency": 16, "max_retries": 0, "api_key_env": "B", "price_prompt_per_1m": 3}, GenerateConfig)
    assert a == b == base and a_opts["api_key_env"] == "A" and make_options(a_opts).concurrency == 1
    c = st.make_config({**base, "temperature": 0.5})
    assert cache_key(st, st.make_config(a), {"prompts": prompts}) != cache_key(st, c, {"prompts": prompts})
    with pytest.raises(ConfigError, match="invalid config") as exc:  # a run option is no config field, and the error says so
        st.make_config({**base, "concurrency": 2})
    assert "run option" in str(exc.value.why) and "options" in str(exc.value.fix)
