from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.data.inspect import inspect_dataset
from slmops.data.io import dataset_splits, load_records, read_dataset, write_jsonl
from slmops.data.readers import iter_rows
from slmops.data.records import parse_record
from slmops.errors import ConfigError, DataError


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def jsonl(path: Path, rows: list[dict]) -> Path:
    return write_lines(path, [json.dumps(r) for r in rows])


CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def test_jsonl_reports_bad_lines_with_file_line_numbers(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "d.jsonl", [
        json.dumps(CHAT),                                   # 1
        "",                                                 # 2 blank: skipped, counted
        '{"messages": [',                                   # 3 bad JSON
        json.dumps({"input": "q", "output": "a"}),          # 4
        json.dumps({"messages": [{"role": "user"}]}),       # 5 missing content
        "[1, 2]",                                           # 6 not an object
    ])
    with pytest.raises(DataError) as exc:
        load_records(f)
    msg = exc.value.message
    assert f"{f}:3: bad JSON" in msg
    assert f"{f}:5: messages[0].content: field required" in msg
    assert f"{f}:6: expected a JSON object, got array" in msg
    assert "3 invalid record(s) of 5" in msg and "--skip-invalid" in msg
    assert [e.line for e in exc.value.errors] == [3, 5, 6]  # type: ignore[attr-defined]

    res = load_records(f, skip_invalid=True)
    assert len(res.records) == 2 and [r.kind for r in res.records] == ["chat", "instruction"]
    assert [(e.line, e.field) for e in res.errors] == [(3, None), (5, "messages[0].content"), (6, None)]
    assert res.counts == {"rows": 5, "valid": 2, "invalid": 3, "kinds": {"chat": 1, "instruction": 1}, "format": "jsonl"}


def test_error_message_lists_first_ten_and_total(tmp_path: Path) -> None:
    f = jsonl(tmp_path / "many.jsonl", [{"text": ""}] * 25 + [{"text": "ok"}])
    with pytest.raises(DataError) as exc:
        load_records(f)
    assert "25 invalid record(s) of 26" in exc.value.message
    assert f"{f}:10: text: must not be empty" in exc.value.message
    assert f"{f}:11:" not in exc.value.message and "and 15 more" in exc.value.message


def test_json_array_gives_element_lines_and_indexes(tmp_path: Path) -> None:
    f = tmp_path / "d.json"
    f.write_text('[\n  {"text": "a"},\n  {"text": "b",\n   "label": "x"},\n  "nope",\n  {"prompt": ""}\n]\n')
    res = load_records(f, skip_invalid=True)
    assert [r.text for r in res.records] == ["a", "b"] and res.records[1].label == "x"
    assert [(e.line, e.index) for e in res.errors] == [(5, 3), (6, 4)]
    assert str(res.errors[0]) == f"{f}:5 (element 3): expected a JSON object, got string"
    rows = list(iter_rows(f, on_error=lambda *a: None))
    assert [(p.line, p.index) for p, _ in rows] == [(2, 1), (3, 2), (6, 4)]


def test_json_array_syntax_error_is_fatal_with_line(tmp_path: Path) -> None:
    f = tmp_path / "d.json"
    f.write_text('[\n {"text": "a"},\n {"text": "b" "c"}\n]')
    with pytest.raises(DataError, match=r"d.json:3: bad JSON in element 2"):
        load_records(f)


def test_json_file_holding_json_lines_is_read_as_jsonl(tmp_path: Path) -> None:
    f = jsonl(tmp_path / "d.json", [{"text": "a"}, {"text": "b"}])
    assert len(load_records(f).records) == 2


def test_csv_rows_have_file_lines(tmp_path: Path) -> None:
    f = tmp_path / "d.csv"
    f.write_text(
        "input,output,label,system\n"              # 1 header
        "What is 2+2?,4,math,\n"                    # 2
        '"multi\nline question",yes,misc,be kind\n'  # 3-4
        "\n"                                        # 5 blank
        "only,two\n"                                # 6 wrong field count
        ",missing input,x,\n"                       # 7 empty input -> absent -> error
        "q,a,y,\n",                                 # 8
        encoding="utf-8",
    )
    res = load_records(f, skip_invalid=True)
    assert [r.messages[0].content for r in res.records] == ["What is 2+2?", "be kind", "q"]
    assert res.records[0].system is None and res.records[1].system == "be kind"
    assert [(e.line, e.message) for e in res.errors] == [
        (6, "row has 2 fields but the header has 4"),
        (7, "input: field required"),
    ]


def test_csv_messages_column_is_json(tmp_path: Path) -> None:
    f = tmp_path / "chat.csv"
    f.write_text('messages,label\n"[{""role"": ""user"", ""content"": ""hi""}]",a\n"not json",b\n')
    res = load_records(f, skip_invalid=True)
    assert res.records[0].messages[0].content == "hi" and res.records[0].label == "a"
    assert res.errors[0].line == 3 and "messages: value is not valid JSON" in res.errors[0].message


def test_parquet_reader(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({
        "messages": [
            [{"role": "user", "content": "hi", "name": None}, {"role": "assistant", "content": "yo", "name": None}],
            [{"role": "user", "content": "", "name": None}],
            [{"role": "system", "content": "s", "name": "sys"}, {"role": "user", "content": "q", "name": None}],
        ],
        "label": ["a", "b", None],
    })
    f = tmp_path / "d.parquet"
    pq.write_table(table, f)
    res = load_records(f, skip_invalid=True)
    assert len(res.records) == 2 and res.records[0].completion == "yo" and res.records[1].label is None
    assert res.records[1].messages[0].name == "sys"
    assert res.errors[0].line is None and res.errors[0].index == 2
    assert str(res.errors[0]) == f"{f}:row 2: messages[0].content: must not be empty"


@pytest.mark.parametrize(("name", "content"), [("e.jsonl", ""), ("b.jsonl", "\n  \n\n"), ("h.csv", "text,label\n"), ("a.json", "[]")])
def test_empty_input_is_an_error(tmp_path: Path, name: str, content: str) -> None:
    f = tmp_path / name
    f.write_text(content)
    with pytest.raises(DataError, match="no records in"):
        load_records(f, skip_invalid=True)


def test_all_invalid_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    f = jsonl(tmp_path / "d.jsonl", [{"foo": 1}, {"bar": 2}])
    with pytest.raises(DataError, match="no valid records .* all 2 are invalid"):
        load_records(f, skip_invalid=True)


def test_paths_and_formats(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_records(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="is a folder"):
        load_records(tmp_path)
    f = jsonl(tmp_path / "data.txt", [{"text": "a"}])
    with pytest.raises(ConfigError, match="--format"):
        load_records(f)
    assert load_records(f, format="jsonl").records[0].text == "a"


def test_kind_and_field_map(tmp_path: Path) -> None:
    f = jsonl(tmp_path / "qa.jsonl", [{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2", "input": "clash"}])
    res = load_records(f, field_map={"question": "input", "answer": "output"}, skip_invalid=True)
    assert res.records[0].kind == "instruction" and res.records[0].completion == "a1"
    assert res.errors[0].line == 2 and "already has 'input'" in res.errors[0].message
    res = load_records(jsonl(tmp_path / "p.jsonl", [{"prompt": "p"}]), kind="prompt")
    assert res.records[0].kind == "prompt"


def test_write_jsonl_is_atomic_and_read_back(tmp_path: Path) -> None:
    recs = [parse_record({"text": "a", "label": 1}), parse_record(CHAT)]
    out = tmp_path / "data.jsonl"
    assert write_jsonl(recs, out) == 2
    assert read_dataset(tmp_path) == recs and read_dataset(out) == recs
    assert [p.name for p in tmp_path.iterdir()] == ["data.jsonl"]

    def boom():
        yield recs[0]
        raise RuntimeError("midway")

    with pytest.raises(RuntimeError):
        write_jsonl(boom(), out)
    assert read_dataset(out) == recs  # old content intact, no temp file left
    assert [p.name for p in tmp_path.iterdir()] == ["data.jsonl"]


def test_read_dataset_splits(tmp_path: Path) -> None:
    for name in ("test", "train", "validation"):
        write_jsonl([parse_record({"text": name})], tmp_path / f"{name}.jsonl")
    assert dataset_splits(tmp_path) == ["train", "validation", "test"]
    assert read_dataset(tmp_path, "validation")[0].text == "validation"
    with pytest.raises(DataError, match="no split 'dev'.*it has: train, validation, test"):
        read_dataset(tmp_path, "dev")
    with pytest.raises(DataError, match="no unsplit data.*split into train, validation, test"):
        read_dataset(tmp_path)
    (tmp_path / "train.jsonl").write_text('{"kind": "text"}\n')
    with pytest.raises(DataError, match="bad line"):
        read_dataset(tmp_path, "train")


def test_inspect_dataset() -> None:
    recs = [parse_record(CHAT | {"label": "a"}), parse_record({"text": "abc", "label": "b"}), parse_record({"prompt": "p"})]
    stats = inspect_dataset(recs)
    assert stats["records"] == 3 and stats["kinds"] == {"chat": 1, "prompt": 1, "text": 1}
    assert stats["labels"] == {"<none>": 1, "a": 1, "b": 1}
    assert stats["roles"] == {"assistant": 1, "user": 2}
    assert stats["messages"] == {"min": 1, "mean": 1.5, "max": 2} and stats["with_completion"] == 1
    by_split = inspect_dataset({"train": recs[:2], "test": recs[2:]})
    assert by_split["records"] == 3 and by_split["splits"]["test"]["records"] == 1


def test_iter_rows_without_handler_raises_after_reading_everything(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "d.jsonl", ['{"text": "a"}', "nope", '{"text": "b"}'])
    seen = []
    with pytest.raises(DataError, match=r"(?s)1 malformed row\(s\).*d.jsonl:2: bad JSON"):
        for _pos, row in iter_rows(f):
            seen.append(row["text"])
    assert seen == ["a", "b"]
