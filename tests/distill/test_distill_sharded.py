"""Teacher generation on Ray: sharded over actors, and as a recipe step whose worker is killed mid-step.

Real components only: a local Ray cluster, the scripted OpenAI-compatible teacher over HTTP on
127.0.0.1, and a moto S3 endpoint as the object-store remote.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray")


def _gen(store: Any, prompts: Any, cfg: dict[str, Any], **kw: Any) -> Any:
    from slmops.stage.runner import run_stage

    return run_stage("distill.generate", {"prompts": prompts}, {**cfg, "cache": False, **kw}, store=store, force=True)


class _Shards:
    """A progress sink recording the shard tasks; optionally interrupts (Ctrl-C) after ``stop_after`` answers."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.names: dict[int, str] = {}
        self.done: dict[str, float] = {}
        self.first: dict[str, float] = {}  # a task's first position: for "teacher answers", what a resumed run found on disk
        self.stop_after = stop_after

    def start(self, task_id: int, description: str, total: float | None) -> None:
        self.names[task_id] = description

    def update(self, task_id: int, completed: float, fields: dict[str, Any]) -> None:
        name = self.names[task_id]
        self.first.setdefault(name, completed)
        self.done[name] = completed
        if self.stop_after is not None and name == "teacher answers" and completed >= self.stop_after:
            raise KeyboardInterrupt

    def finish(self, task_id: int) -> None: ...


def test_sharded_generate_equals_local_and_resumes(store, prompts, teacher_server, http_cfg, ray_cluster) -> None:
    from slmops import progress

    local = _gen(store, prompts, http_cfg)
    asked_locally = teacher_server.script.count()
    assert asked_locally == 20

    # interrupted after 6 answers: they stay in the work file ...
    with progress.use_sink(_Shards(stop_after=6)), pytest.raises(KeyboardInterrupt):
        _gen(store, prompts, http_cfg, executor="ray", workers=2, concurrency=1)
    assert 6 <= teacher_server.script.count() - asked_locally < 20
    # ... and the resumed run starts from them and asks only for what is missing
    sink = _Shards()
    with progress.use_sink(sink):
        sharded = _gen(store, prompts, http_cfg, executor="ray", workers=2, concurrency=1)
    assert sharded.artifact.digest == local.artifact.digest  # deterministic merge: same dataset, same digest
    resumed = sink.first["teacher answers"]
    assert 6 <= resumed < 20
    assert sink.done["shard 1/2"] + sink.done["shard 2/2"] == 20 - resumed
    assert sorted(n for n in sink.done if n.startswith("shard")) == ["shard 1/2", "shard 2/2"]


def _ray_workers_running(task: str) -> list[int]:
    """Ray names a worker process after the task it runs: ``ray::<task name>``."""
    import psutil

    pids = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd.startswith(f"ray::{task}"):
            pids.append(p.pid)
    return pids


@pytest.mark.slow
def test_killed_worker_is_retried_and_the_result_is_identical(store, prompts, teacher_server, http_cfg, ray_cluster, s3_endpoint,
                                                            tmp_path: Path) -> None:
    """SIGKILL the Ray worker in the middle of a distill.generate step: Ray retries it, the dataset is the local one."""
    from slmops.pipeline.execute import run_recipe
    from slmops.pipeline.recipe import parse_recipe
    from slmops.store import Store
    from slmops.store.remotes import add_remote
    from slmops.store.sync import open_remote

    config = {**http_cfg, "cache": False, "concurrency": 1}
    recipe = {"name": "label", "steps": {
        "prompts": {"stage": "data.synth", "config": {"task": "support-intent", "n": 20, "prompts_only": True}},
        "labelled": {"stage": "distill.generate", "inputs": {"prompts": "${prompts}"}, "config": config, "name": "labelled"},
    }}
    local = _gen(store, prompts, http_cfg)
    teacher_server.script.queue.extend(["slow:0.25"] * 20)
    with Store(tmp_path / "driver") as driver:
        spec = add_remote(driver, "team", f"s3://slmops-test/{uuid.uuid4().hex[:8]}", endpoint_url=s3_endpoint)
        killed: list[int] = []

        def kill_mid_step() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not killed:
                if teacher_server.script.count() >= 20 + 3:  # the step is answering
                    for pid in _ray_workers_running("slmops:label:labelled"):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                time.sleep(0.05)

        killer = threading.Thread(target=kill_mid_step, daemon=True)
        killer.start()
        results = run_recipe(parse_recipe(recipe), store=driver, executor="ray")
        killer.join(timeout=5)
        assert killed, "the worker was never seen running the step"
        # the retry resumed from the answers the killed attempt had written: at most the one in flight is asked twice
        assert teacher_server.script.count() - 20 <= 21
        out = results[-1].artifact
        assert out.digest == local.artifact.digest
        assert driver.lookup("labelled").digest == out.digest
        assert not list(driver.tmp.iterdir())  # nothing half-written left in the driver's store
        objects = open_remote(driver)
        records = {k.rsplit("/", 1)[-1] for k in objects.list(objects.key("artifacts"))}
        assert records == {f"{results[0].artifact.digest}.json"}  # workers publish no artifact record, only the driver's inputs
        assert spec.name == "team"



def test_sharded_local_teacher_equals_local(smollm2_store, smollm2_hf, ray_cluster) -> None:
    """A local teacher (the real SmolLM2 model) held by each of 2 Ray actors: the same dataset as one process, greedy.

    8 prompts in batches of 4, so each shard answers exactly the batches the local run does; every
    answer is real text that passes validation (a tiny random model only answers whitespace).
    """
    from slmops import progress
    from slmops.data.io import read_dataset
    from slmops.stage.runner import run_stage

    prompts = run_stage("data.synth", {}, {"task": "support-intent", "n": 12, "prompts_only": True, "seed": 3},
                        store=smollm2_store).artifact
    cfg = {"max_tokens": 8, "batch_size": 4, "splits": ["train"], "limit": 8, "cache": False,
           "validation": {"drop_truncated": False}}
    inputs = {"prompts": prompts, "teacher": smollm2_hf}
    local = run_stage("distill.generate", inputs, cfg, store=smollm2_store, force=True).artifact
    rows = read_dataset(local, "train")
    assert len(rows) == local.manifest.metrics["kept"] >= 4
    assert all(r.messages[-1].role == "assistant" and r.messages[-1].content.strip() for r in rows)
    sink = _Shards()
    with progress.use_sink(sink):
        sharded = run_stage("distill.generate", inputs, {**cfg, "executor": "ray", "workers": 2}, store=smollm2_store, force=True).artifact
    assert sink.done["shard 1/2"] == sink.done["shard 2/2"] == 4  # each actor answered its own 4 prompts
    assert sharded.digest == local.digest
