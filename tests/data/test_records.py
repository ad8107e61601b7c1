from __future__ import annotations

import json

import pytest

from slmops.data.records import SCHEMA, Record, RecordInvalid, detect_kind, parse_record
from slmops.errors import DataError


def test_chat_record_normalises_and_keeps_label_id_meta() -> None:
    r = parse_record({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                                   {"role": "assistant", "content": "hello"}], "label": "greet", "id": 7, "meta": {"src": "x"}})
    assert r.kind == "chat" and r.id == "7" and r.label == "greet" and r.meta == {"src": "x"}
    assert [m.role for m in r.messages] == ["system", "user", "assistant"]
    assert r.system == "be brief" and r.completion == "hello" and [m.role for m in r.prompt_messages] == ["system", "user"]
    assert r.text is None


def test_instruction_prompt_text_kinds() -> None:
    ins = parse_record({"input": "2+2?", "output": "4", "system": "math"})
    assert ins.kind == "instruction"
    assert [(m.role, m.content) for m in ins.messages] == [("system", "math"), ("user", "2+2?"), ("assistant", "4")]
    pr = parse_record({"prompt": "Tell a joke", "label": 1})
    assert pr.kind == "prompt" and [m.role for m in pr.messages] == ["user"] and pr.completion is None and pr.label == 1
    tx = parse_record({"text": "plain words"})
    assert tx.kind == "text" and tx.messages == [] and tx.text == "plain words" and tx.content_text() == "plain words"


def test_detect_kind_and_explicit_kind() -> None:
    assert detect_kind({"messages": []}) == "chat"
    assert detect_kind({"input": "a", "output": "b"}) == "instruction"
    assert detect_kind({"prompt": "p"}) == "prompt"
    assert detect_kind({"text": "t"}) == "text"
    with pytest.raises(DataError, match="cannot tell the record kind"):
        detect_kind({"question": "q"})
    with pytest.raises(RecordInvalid) as exc:
        parse_record({"prompt": "p"}, kind="text")
    assert exc.value.field == "text"


def test_on_disk_form_is_stable_and_round_trips() -> None:
    r = parse_record({"input": "q", "output": "a", "label": "x"})
    d = json.loads(r.to_json())
    assert list(d) == ["kind", "id", "label", "messages", "text", "meta"]
    assert d["kind"] == "instruction" and d["text"] is None and d["meta"] == {}
    assert parse_record(d) == r
    assert Record.model_validate(d) == r
    assert r.to_source() == {"input": "q", "output": "a", "label": "x"}
    assert SCHEMA == "slmops.records/1"


@pytest.mark.parametrize(
    ("obj", "field", "needle"),
    [
        ({"messages": [{"role": "user"}]}, "messages[0].content", "field required"),
        ({"messages": []}, "messages", "at least 1"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role", "'system', 'user', 'assistant' or 'tool'"),
        ({"input": "a", "ouput": "b"}, "output", "ouput: unknown field"),
        ({"text": "   "}, "text", "must not be empty"),
        ({"prompt": 3}, "prompt", "valid string"),
        ({"kind": "text", "messages": [], "text": None}, None, "non-empty 'text'"),
    ],
)
def test_invalid_records_name_the_field(obj: dict, field: str | None, needle: str) -> None:
    with pytest.raises(RecordInvalid) as exc:
        parse_record(obj)
    assert exc.value.field == field
    assert needle in exc.value.detail


def test_records_are_immutable() -> None:
    r = parse_record({"text": "t"})
    with pytest.raises(ValueError):
        r.label = "x"  # type: ignore[misc]


def test_data_package_exports_and_stays_light() -> None:
    import subprocess
    import sys

    from slmops import data

    assert data.read_dataset.__module__ == "slmops.data.io" and data.Record is Record
    code = (
        "import sys, slmops.data, slmops.data.io, slmops.data.stages, slmops.data.split, slmops.data.inspect\n"
        "print(' '.join(m for m in ('torch', 'transformers', 'pyarrow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []
