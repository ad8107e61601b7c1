"""``distill generate --task classification`` from a user's own prompts file: labelled records, and a lineage that shows the teacher.

The prompts carry no labels (a user's ``prompts.jsonl``, named bare, as users type it): each kept
record is labelled with the teacher's validated answer, and ``models lineage`` of the dataset shows
the HTTP teacher (its URL and model), which lives in the manifest and not in the store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def test_classification_records_are_labelled_and_lineage_shows_the_teacher(cli: Any, teacher_server: Any, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {"my card was charged twice": "Billing.", "I want my money back": "refund", "where is my parcel": "shipping"}
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in answers))
    teacher_server.script.answer = lambda body: answers[body["messages"][-1]["content"]]
    monkeypatch.chdir(tmp_path)
    r = cli("distill", "generate", "--prompts", "prompts.jsonl", "--base-url", teacher_server.url, "--model", "teacher-x",
            "--task", "classification", "--label", "billing", "--label", "refund", "--label", "shipping", "--name", "intents", "--json")
    assert r.code == 0, r.err
    from slmops.data.io import read_dataset
    from slmops.store import Store

    with Store() as store:
        rows = read_dataset(store.lookup("intents"))
    assert {x.messages[-2].content: x.label for x in rows} == {
        "my card was charged twice": "billing", "I want my money back": "refund", "where is my parcel": "shipping"}

    tree = cli("models", "lineage", "intents", "--json").json
    assert tree["external"] == {"role": "teacher", "type": "http", "url": teacher_server.url, "model": "teacher-x"}
    assert tree["children"][0]["role"] == "prompts"
    human = cli("models", "lineage", "intents").out
    assert "teacher-x" in human and teacher_server.url in human
