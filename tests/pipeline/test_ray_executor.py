"""``slmops run --executor ray`` on a real local Ray cluster, artifacts exchanged through a real S3 endpoint (moto).

The same recipe through the local and the Ray executor gives the same artifacts, lineage, names and
aliases; re-runs are cache hits on the driver; ``--until`` and failed gates behave the same; the
recipe's resources are validated and reach Ray.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray")

RECIPE: dict[str, Any] = {
    "name": "branches",
    "steps": {
        "a": {"stage": "data.synth", "config": {"task": "support-intent", "n": 60}, "name": "a-data", "resources": {"cpus": 1}},
        "b": {"stage": "data.synth", "config": {"task": "arithmetic", "n": 60}, "resources": {"cpus": 1, "memory": "50MB"}},
        "a_clean": {"stage": "data.dedup", "inputs": {"data": "${a}"}, "gates": ["records>=10"], "name": "a-clean"},
        "b_exact": {"stage": "data.dedup", "inputs": {"data": "${b}"}, "config": {"near": False}},
        "prod": {"action": "alias", "target": "${a_clean}", "alias": "a-clean@prod"},
    },
}


def _run(home: Path, recipe: dict[str, Any], **kw: Any) -> dict[str, Any]:
    from slmops.pipeline.execute import run_recipe
    from slmops.pipeline.recipe import parse_recipe
    from slmops.store import Store

    with Store(home) as store:
        results = run_recipe(parse_recipe(recipe), store=store, **kw)
        return {r.step: (r.status, r.artifact.digest if r.artifact else None, store.parents(r.artifact.digest) if r.artifact else None)
                for r in results}


def _with_remote(home: Path, endpoint: str) -> None:
    from slmops.store import Store
    from slmops.store.remotes import add_remote

    with Store(home) as store:
        add_remote(store, "team", f"s3://slmops-test/{uuid.uuid4().hex[:8]}", endpoint_url=endpoint)


def test_two_branches_on_ray_equal_the_local_executor(tmp_path, ray_cluster, s3_endpoint) -> None:
    local = _run(tmp_path / "local", RECIPE)
    _with_remote(tmp_path / "ray", s3_endpoint)
    on_ray = _run(tmp_path / "ray", RECIPE, executor="ray")
    assert {s: v[1:] for s, v in on_ray.items()} == {s: v[1:] for s, v in local.items()}  # same digests and lineage
    assert [v[0] for v in on_ray.values()] == ["ran", "ran", "ran", "ran", "done"]
    from slmops.store import Store

    with Store(tmp_path / "ray") as store:
        assert store.lookup("a-clean", alias="prod").digest == local["a_clean"][1]
        assert store.lookup("a-data").digest == local["a"][1]
        for digest in store.verify():
            assert digest["ok"]
    again = _run(tmp_path / "ray", RECIPE, executor="ray")
    assert [v[0] for v in again.values()] == ["cached", "cached", "cached", "cached", "done"]


def test_shared_fs_exchange_until_and_gates(tmp_path, ray_cluster) -> None:
    from slmops.evaluate.gates import GateFailed

    recipe = {**RECIPE, "executor": {"exchange": "shared-fs"}}
    local = _run(tmp_path / "local", recipe, until="b_exact")
    on_ray = _run(tmp_path / "ray", recipe, executor="ray", until="b_exact")
    assert list(on_ray) == list(local) == ["b", "b_exact"]
    assert on_ray == local | {s: ("ran", *v[1:]) for s, v in local.items()}
    assert not list((tmp_path / "ray" / "artifacts" / ".tmp").iterdir())  # no worker folder left behind
    strict = {**recipe, "steps": {**recipe["steps"], "a_clean": {**recipe["steps"]["a_clean"], "gates": ["records>=100000"]}}}
    with pytest.raises(GateFailed, match="records>=100000"):
        _run(tmp_path / "ray", strict, executor="ray")
    from slmops.store import Store

    with Store(tmp_path / "ray") as store:  # the steps that ran are committed; the alias after the gate is not set
        assert store.lookup("a-clean").digest
        assert store.aliases("a-clean") == {}


def test_resources_are_validated(tmp_path) -> None:
    from slmops.errors import ConfigError
    from slmops.pipeline.recipe import parse_recipe

    for bad, why in (({"cpus": -1}, "greater than or equal to 0"), ({"memory": "lots"}, "not a size"), ({"gpu": 1}, "unknown field")):
        steps = {"a": {"stage": "data.synth", "config": {"n": 20}, "resources": bad}}
        with pytest.raises(ConfigError, match=why):
            parse_recipe({"name": "x", "steps": steps})
    ok = parse_recipe({"name": "x", "steps": {"a": {"stage": "data.synth", "resources": {"cpus": 0.5, "gpus": 1, "memory": "2GiB"}}}})
    assert ok.steps["a"].resources.memory == 2 * 1024**3


def test_ray_executor_without_a_remote_says_how_to_fix(tmp_path, ray_cluster) -> None:
    from slmops.errors import SlmopsError

    with pytest.raises(SlmopsError, match="shared-fs"):
        _run(tmp_path / "noremote", RECIPE, executor="ray")


def test_interrupted_driver_resumes_from_committed_steps(tmp_path, ray_cluster) -> None:
    """Ctrl-C in the driver once one step is committed: the next run takes it from the cache and runs the rest."""
    recipe = {**RECIPE, "executor": {"exchange": "shared-fs"}}
    first: list[str] = []

    def stop(res: Any) -> None:
        first.append(res.step)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "ray", recipe, executor="ray", on_step=stop)
    assert not list((tmp_path / "ray" / "artifacts" / ".tmp").iterdir())  # the cancelled step left no folder
    again = _run(tmp_path / "ray", recipe, executor="ray")
    assert again[first[0]][0] == "cached"
    assert sorted(s for s, v in again.items() if v[0] == "ran") == sorted(set(RECIPE["steps"]) - {first[0], "prod"})


def test_cli_run_executor_ray(tmp_path, ray_cluster, cli) -> None:
    import yaml

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "executor": {"exchange": "shared-fs"}}))
    r = cli("run", str(path), "--executor", "ray", "--json")
    assert r.code == 0, r.err
    assert [s["status"] for s in r.json["steps"]] == ["ran", "ran", "ran", "ran", "done"]
    r = cli("run", str(path), "--executor", "nope")
    assert r.code == 1 and "--executor 'nope'" in r.err


def test_unreachable_remote_fails_the_step_naming_the_endpoint(tmp_path, ray_cluster) -> None:
    import socket

    from slmops.store import Store
    from slmops.store.objects import RemoteError
    from slmops.store.remotes import add_remote

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Store(tmp_path / "ray") as store:
        add_remote(store, "gone", "s3://slmops-test/x", endpoint_url=f"http://127.0.0.1:{port}")
    recipe = {"name": "one", "steps": {"a": RECIPE["steps"]["a"]}}
    with pytest.raises(RemoteError, match=f"step 'a' .*cannot reach remote gone .*127.0.0.1:{port}"):
        _run(tmp_path / "ray", recipe, executor="ray")
    with Store(tmp_path / "ray") as store:  # nothing half-committed, nothing left behind
        assert store.artifacts_list(named_only=False) == []
        assert not list(store.tmp.iterdir())
