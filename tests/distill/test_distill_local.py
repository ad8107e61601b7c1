"""Stage 1 with a local teacher model: batched generation, top-k logprobs as token ids, lineage."""

from __future__ import annotations

import json

from slmops.data.io import read_dataset
from slmops.distill.teachers import LocalTeacher, Sampling, TeacherRequest
from slmops.stage.runner import run_stage


def test_local_teacher_answers_in_batches(store, prompts, tiny_pair):
    teacher = tiny_pair["teacher"]
    cfg = {
        "max_tokens": 6,
        "top_logprobs": 4,
        "splits": ["train"],
        "limit": 6,
        "temperature": 1.0,
        "validation": {"drop_truncated": False, "drop_refusals": False, "drop_duplicates": False},
    }
    r = run_stage("distill.generate", {"prompts": prompts, "teacher": teacher}, cfg, store=store, options={"batch_size": 4})
    m = r.artifact.manifest
    assert sorted(p.role for p in m.parents) == ["prompts", "teacher"]
    assert m.meta["teacher"] == {"type": "local", "digest": teacher.digest}
    assert m.meta["last_process"]["batches"] == 2
    rows = read_dataset(r.artifact, "train")
    topk = [json.loads(x) for x in (r.artifact.path / "topk" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == m.metrics["kept"] and len(topk) == len(rows) > 0
    t = topk[0]
    assert len(t["ids"]) == len(t["top_ids"]) == len(t["lp"]) == len(t["tokens"]) and len(t["top_ids"][0]) == 4
    assert t["top_lp"][0] == sorted(t["top_lp"][0], reverse=True)


def test_batching_does_not_change_greedy_answers(tiny_pair):
    reqs = [
        TeacherRequest(f"k{i}", [{"role": "user", "content": text}])
        for i, text in enumerate(["hi", "where is my order number 12345 please tell me", "refund", "a b c d e f g h"])
    ]
    t = LocalTeacher(tiny_pair["teacher"], Sampling(max_tokens=5, top_logprobs=2), batch_size=4)
    try:
        together = t.generate_batch(reqs)
        alone = [t.generate_batch([r])[0] for r in reqs]
    finally:
        t.close()
    assert [a.logprobs["ids"] for a in together] == [a.logprobs["ids"] for a in alone]
    for a, b in zip(together, alone, strict=True):
        assert abs(a.logprobs["lp"][0] - b.logprobs["lp"][0]) < 1e-3
