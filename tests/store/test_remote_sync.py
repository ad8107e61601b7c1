"""push/pull against a real S3 endpoint (moto's server on 127.0.0.1): round trip, dedup, resume, verification, errors."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("boto3")


def _remote(store: Any, endpoint: str, name: str = "team") -> Any:
    from slmops.store.remotes import add_remote

    return add_remote(store, name, f"s3://slmops-test/{uuid.uuid4().hex[:8]}", endpoint_url=endpoint)


def _model(store: Any, tmp_path: Path, *, files: dict[str, bytes], name: str, parents: list[Any] | None = None, kind: str = "model") -> Any:
    from slmops.store import Parent

    src = tmp_path / uuid.uuid4().hex
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    return store.commit(src, kind=kind, format="hf-safetensors", name=name, parents=[Parent(digest=p.digest, role="data") for p in parents or []])


@pytest.fixture
def lineage(store: Any, tmp_path: Path) -> dict[str, Any]:
    data = _model(store, tmp_path, files={"train.jsonl": b'{"text": "hello"}\n' * 50}, name="ds", kind="dataset")
    model = _model(store, tmp_path, files={"a.safetensors": os.urandom(300_000), "b.safetensors": os.urandom(300_000),
                                           "cfg/config.json": b'{"a": 1}'},
                   name="bot", parents=[data])
    store.set_alias("bot", "prod", 1)
    return {"data": data, "model": model}


def test_push_pull_round_trip_carries_lineage_names_aliases_and_dedups(store, lineage, s3_endpoint, tmp_path) -> None:
    from slmops.store import Store
    from slmops.store.remotes import add_remote
    from slmops.store.sync import pull, push

    spec = _remote(store, s3_endpoint)
    first = push(store, "bot@prod")
    assert first.transferred == [lineage["data"].digest, lineage["model"].digest]
    assert first.bytes_transferred == lineage["data"].manifest.size_bytes + lineage["model"].manifest.size_bytes
    assert set(first.names) >= {"ds:1", "bot:1", "bot@prod"}
    again = push(store, "bot")
    assert again.transferred == [] and again.bytes_transferred == 0 and again.files_transferred == 0

    with Store(tmp_path / "other") as other:
        add_remote(other, spec.name, spec.url, endpoint_url=s3_endpoint)
        got = pull(other, "bot@prod")
        assert got.transferred == [lineage["data"].digest, lineage["model"].digest]
        assert got.bytes_verified == got.bytes_transferred == first.bytes_transferred
        model = other.lookup("bot", alias="prod")
        assert model.digest == lineage["model"].digest
        model.verify()
        assert other.lookup("ds").digest == lineage["data"].digest
        assert other.parents(model.digest) == [(lineage["data"].digest, "data")]
        assert model.manifest == lineage["model"].manifest  # the manifest travels unchanged
        assert pull(other, "bot").bytes_transferred == 0  # already here: nothing moves


def test_interrupted_push_resumes_with_only_the_missing_bytes(store, lineage, s3_endpoint, tmp_path) -> None:
    """Ctrl-C after a file: the remote holds complete blobs but no artifact; the next push sends only the rest."""
    from slmops import progress
    from slmops.store.sync import open_remote, pull, push, record_key

    _remote(store, s3_endpoint)

    class Interrupt:
        def start(self, task_id: int, description: str, total: float | None) -> None: ...
        def finish(self, task_id: int) -> None: ...

        def update(self, task_id: int, completed: float, fields: dict[str, Any]) -> None:
            if completed >= 300_000:  # after a.safetensors, before b.safetensors
                raise KeyboardInterrupt

    with progress.use_sink(Interrupt()), pytest.raises(KeyboardInterrupt):
        push(store, "bot")
    objects = open_remote(store)
    assert objects.exists(record_key(objects, lineage["data"].digest))
    assert not objects.exists(record_key(objects, lineage["model"].digest))  # nothing half-visible
    with pytest.raises(Exception, match="nothing named bot"):
        from slmops.store import Store
        from slmops.store.remotes import add_remote

        with Store(tmp_path / "peek") as peek:
            add_remote(peek, "team", objects.spec.url, endpoint_url=s3_endpoint)
            pull(peek, "bot")
    resumed = push(store, "bot")
    assert resumed.transferred == [lineage["model"].digest]
    # a.safetensors is on the remote already: only b.safetensors and cfg/config.json move
    assert resumed.bytes_transferred == lineage["model"].manifest.size_bytes - 300_000 and resumed.files_transferred == 2


def test_pull_refuses_a_corrupted_blob_and_publishes_nothing(store, lineage, s3_endpoint, tmp_path) -> None:
    from slmops.errors import IntegrityError
    from slmops.store import Store
    from slmops.store.artifact import file_digest
    from slmops.store.remotes import add_remote
    from slmops.store.sync import open_remote, pull, push

    spec = _remote(store, s3_endpoint)
    push(store, "bot")
    objects = open_remote(store)
    sha = file_digest(lineage["model"].path / "b.safetensors")
    objects.client.put_object(Bucket=objects.bucket, Key=objects.blob_key(sha), Body=b"x" * 300_000)  # same size, other bytes
    with Store(tmp_path / "other") as other:
        add_remote(other, spec.name, spec.url, endpoint_url=s3_endpoint)
        with pytest.raises(IntegrityError, match="corrupt"):
            pull(other, "bot")
        assert not other.exists(lineage["model"].digest)
        assert other.exists(lineage["data"].digest)  # the intact parent arrived and is verified
        other.get(lineage["data"].digest).verify()


def test_unreachable_remote_names_the_endpoint_and_changes_nothing(store, lineage, monkeypatch) -> None:
    import socket

    from slmops.store.objects import RemoteError
    from slmops.store.sync import push
    from slmops.testing.scale import TEST_CREDENTIALS

    for k, v in TEST_CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    _remote(store, endpoint)
    before = store.artifacts_list(named_only=False)
    with pytest.raises(RemoteError, match=f"cannot reach remote team .*127.0.0.1:{port}"):
        push(store, "bot")
    assert store.artifacts_list(named_only=False) == before
    lineage["model"].verify()


def test_remote_config_refuses_credentials_and_keeps_none(store, s3_endpoint, cli) -> None:
    r = cli("store", "remote", "add", "team", "s3://AKIA:secret@slmops-test/x")
    assert r.code == 1 and "carries credentials" in r.err
    r = cli("store", "remote", "add", "team", "s3://slmops-test/x", "--endpoint-url", s3_endpoint, "--json")
    assert r.code == 0 and r.json["default"] is True
    assert cli("store", "remote", "ls", "--json").json == [r.json]
    dump = "\n".join(store._conn.iterdump())
    assert "slmops-test/x" in dump
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in dump and os.environ["AWS_ACCESS_KEY_ID"] not in dump


def test_cli_push_pull(store, lineage, s3_endpoint, cli, tmp_path, monkeypatch) -> None:
    _remote(store, s3_endpoint)
    r = cli("push", "bot", "--json")
    assert r.code == 0, r.err
    assert r.json["bytes_transferred"] > 0
    assert cli("push", "bot", "--json").json["bytes_transferred"] == 0
    url = r.json and store._rows("SELECT url FROM remotes")[0]["url"]
    monkeypatch.setenv("SLMOPS_HOME", str(tmp_path / "fresh"))
    assert cli("store", "remote", "add", "team", url, "--endpoint-url", s3_endpoint).code == 0
    r = cli("pull", "bot@prod", "--json")
    assert r.code == 0, r.err
    assert r.json["digest"] == lineage["model"].digest and r.json["bytes_verified"] == r.json["bytes_transferred"]
    r = cli("pull", "nothing-here")
    assert r.code == 1 and "nothing named nothing-here" in r.err


def test_a_worker_gets_an_artifact_by_digest_from_the_remote(store, lineage, s3_endpoint, tmp_path, monkeypatch) -> None:
    """What a Ray actor does when it cannot see the driver's store: the driver pushes by digest, the worker pulls and verifies."""
    from slmops.stage.shards import artifact_on_worker, artifact_source

    _remote(store, s3_endpoint)
    src = artifact_source(lineage["model"], store)
    assert src["remote"]["endpoint_url"] == s3_endpoint and "AWS" not in str(src)
    monkeypatch.setenv("SLMOPS_WORKER_HOME", str(tmp_path / "worker"))
    got = artifact_on_worker({**src, "path": str(tmp_path / "not-shared")})
    assert got.digest == lineage["model"].digest and got.path.is_relative_to(tmp_path / "worker")
    got.verify()
