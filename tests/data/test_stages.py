from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.data.io import dataset_splits, read_dataset
from slmops.errors import ConfigError, DataError
from slmops.stage.runner import run_stage


def _source(path: Path, n: int = 30, extra: list[str] | None = None) -> Path:
    lines = [json.dumps({"input": f"question {i} about topic {i % 3}", "output": f"answer {i}", "label": f"t{i % 3}"}) for i in range(n)]
    path.write_text("\n".join(lines + (extra or [])) + "\n")
    return path


def test_import_registers_caches_and_follows_file_content(tmp_path: Path, store) -> None:
    src = _source(tmp_path / "qa.jsonl")
    first = run_stage("data.import", {}, {"path": str(src)}, store=store, output_name="qa")
    art = first.artifact
    assert not first.cached and first.version == 1
    assert art.kind == "dataset" and art.manifest.format == "jsonl"
    assert art.manifest.metrics == {"records": 30, "invalid": 0}
    assert art.manifest.meta["kinds"] == {"instruction": 30} and art.manifest.meta["source"] == "qa.jsonl"
    assert art.manifest.stage is not None and art.manifest.stage.config["path"] == str(src)
    assert len(read_dataset(art)) == 30 and dataset_splits(art) == ["data"]
    assert store.lookup("qa").digest == art.digest

    again = run_stage("data.import", {}, {"path": str(src)}, store=store)
    assert again.cached and again.digest == art.digest

    _source(src, n=31)  # same path, new content: the fingerprint misses the cache
    changed = run_stage("data.import", {}, {"path": str(src)}, store=store)
    assert not changed.cached and changed.digest != art.digest
    assert changed.artifact.manifest.metrics["records"] == 31


def test_import_invalid_rows(tmp_path: Path, store) -> None:
    src = _source(tmp_path / "bad.jsonl", n=4, extra=["{oops", json.dumps({"input": "x"})])
    with pytest.raises(DataError) as exc:
        run_stage("data.import", {}, {"path": str(src)}, store=store)
    assert f"{src}:5: bad JSON" in exc.value.message and f"{src}:6: output: field required" in exc.value.message
    res = run_stage("data.import", {}, {"path": str(src), "skip_invalid": True}, store=store)
    assert res.artifact.manifest.metrics == {"records": 4, "invalid": 2}
    report = json.loads(res.artifact.file("import_errors.json").read_text())
    assert [e["line"] for e in report["errors"]] == [5, 6] and report["errors"][0]["file"] == "bad.jsonl"


def test_import_config_and_path_errors(tmp_path: Path, store) -> None:
    with pytest.raises(ConfigError, match="unknown field"):
        run_stage("data.import", {}, {"path": "x.jsonl", "colour": "red"}, store=store)
    with pytest.raises(DataError, match="no such file"):
        run_stage("data.import", {}, {"path": str(tmp_path / "missing.jsonl")}, store=store)


def test_import_csv_with_field_map(tmp_path: Path, store) -> None:
    src = tmp_path / "faq.csv"
    src.write_text("question,answer\nHow do I reset?,Hold the button.\nWhere is it?,Here.\n")
    res = run_stage("data.import", {}, {"path": str(src), "field_map": {"question": "input", "answer": "output"}}, store=store)
    recs = read_dataset(res.artifact)
    assert [r.completion for r in recs] == ["Hold the button.", "Here."]


def test_split_stage_lineage_cache_and_stratification(tmp_path: Path, store) -> None:
    data = run_stage("data.import", {}, {"path": str(_source(tmp_path / "qa.jsonl", n=60))}, store=store).artifact
    cfg = {"train": 0.7, "validation": 0.15, "test": 0.15, "seed": 1, "stratify_by": "label"}
    res = run_stage("data.split", {"data": data}, cfg, store=store)
    art = res.artifact
    assert art.manifest.metrics == {"train": 42, "validation": 9, "test": 9}
    assert dataset_splits(art) == ["train", "validation", "test"]
    assert art.manifest.meta["counts"]["by_label"]["t0"] == {"train": 14, "validation": 3, "test": 3}
    assert [p.digest for p in art.manifest.parents] == [data.digest] and art.manifest.parents[0].role == "data"
    assert store.parents(art.digest) == [(data.digest, "data")]
    assert {r.messages[0].content for r in read_dataset(art, "test")}.isdisjoint(r.messages[0].content for r in read_dataset(art, "train"))
    assert run_stage("data.split", {"data": data}, cfg, store=store).cached
    with pytest.raises(DataError, match="no unsplit data"):
        read_dataset(art)
    with pytest.raises(ConfigError, match="sum to 1"):
        run_stage("data.split", {"data": data}, {"train": 0.9, "validation": 0.2, "test": 0.1}, store=store)
    with pytest.raises(ConfigError, match="no record has this field"):
        run_stage("data.split", {"data": data}, {"stratify_by": "topic"}, store=store)


def test_dedup_stage(tmp_path: Path, store) -> None:
    long = "Refunds are issued to the original payment method within five business days after we receive the returned item."
    rows = [
        {"text": long, "id": "a"},
        {"text": long.upper(), "id": "b"},  # exact (after normalisation)
        {"text": long.replace("five", "5") + "!", "id": "c"},  # near
        {"text": "Gift cards cannot be exchanged for cash and expire two years after the date of purchase.", "id": "d"},
    ]
    src = tmp_path / "t.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = run_stage("data.import", {}, {"path": str(src)}, store=store).artifact
    res = run_stage("data.dedup", {"data": data}, {}, store=store)
    art = res.artifact
    assert art.manifest.metrics == {"records": 2, "removed": 2, "removed_exact": 1, "removed_near": 1}
    assert [r.id for r in read_dataset(art)] == ["a", "d"]
    report = json.loads(art.file("dedup_report.json").read_text())
    assert [(x["id"], x["duplicate_of_id"], x["reason"]) for x in report["removed"]] == [("b", "a", "exact"), ("c", "a", "near")]
    assert store.parents(art.digest) == [(data.digest, "data")]
    assert run_stage("data.dedup", {"data": data}, {}, store=store).cached
    assert not run_stage("data.dedup", {"data": data}, {"near": False}, store=store).cached
    with pytest.raises(ConfigError, match="nothing to do"):
        run_stage("data.dedup", {"data": data}, {"exact": False, "near": False}, store=store)


def test_dedup_of_a_split_dataset_removes_cross_split_leaks(tmp_path: Path, store) -> None:
    src = tmp_path / "t.jsonl"
    texts = [f"distinct record {i} " + "filler words " * (i % 5) + f"tail {i * 7}" for i in range(40)]
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts + texts[:5]))
    data = run_stage("data.import", {}, {"path": str(src)}, store=store).artifact
    split = run_stage("data.split", {"data": data}, {}, store=store).artifact
    deduped = run_stage("data.dedup", {"data": split}, {"near": False}, store=store).artifact
    assert dataset_splits(deduped) == ["train", "validation", "test"]
    seen = [r.text for name in ("train", "validation", "test") for r in read_dataset(deduped, name)]
    assert len(seen) == len(set(seen)) == 40
    report = json.loads(deduped.file("dedup_report.json").read_text())
    assert all("split" in x and "duplicate_of_split" in x for x in report["removed"])
