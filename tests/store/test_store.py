"""The artifact store: commit, names/versions/aliases/tags, lineage, rm, gc and verify."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.errors import IntegrityError, StoreError
from slmops.store import Parent, StageInfo, Store


def put(store: Store, text: str, *, kind: str = "dataset", name: str | None = None, parents: list[str] | None = None):
    with store.staging() as tmp:
        (tmp / "data.txt").write_text(text)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "x.bin").write_bytes(text.encode() * 3)
        return store.commit(tmp, kind=kind, format="text", name=name,
                            parents=[Parent(digest=p, role="data") for p in parents or []],
                            stage=StageInfo(name="test.put", version=1, config={"text": text}))


def test_commit_writes_manifest_and_content_addressed_dir(store: Store) -> None:
    art = put(store, "hello", name="greeting")
    assert art.path == store.artifacts / art.digest
    manifest = json.loads((art.path / "manifest.json").read_text())
    assert manifest["kind"] == "dataset" and manifest["digest"] == art.digest
    assert manifest["files"] == 2 and manifest["size_bytes"] == 5 + 15
    assert manifest["stage"]["config"] == {"text": "hello"}
    assert manifest["versions"]["python"] and manifest["created_at"]
    assert not list(store.tmp.iterdir()), "staging dir must be gone after commit"
    # same content → same digest, no second directory
    again = put(store, "hello")
    assert again.digest == art.digest
    assert store.lookup("greeting").digest == art.digest


def test_versions_aliases_and_tags(store: Store) -> None:
    a = put(store, "v1", name="bot")
    b = put(store, "v2", name="bot")
    assert [v["version"] for v in store.versions("bot")] == [1, 2]
    assert store.lookup("bot").digest == b.digest
    assert store.lookup("bot", version=1).digest == a.digest
    store.set_alias("bot", "prod", 1)
    assert store.lookup("bot", alias="prod").digest == a.digest
    store.set_alias("bot", "prod", 2)  # re-pointing = rollout / rollback
    assert store.lookup("bot", alias="prod").digest == b.digest
    with pytest.raises(StoreError, match="bot@canary is not set"):
        store.lookup("bot", alias="canary")
    with pytest.raises(StoreError, match="versions 1, 2"):
        store.lookup("bot", version=7)
    with pytest.raises(StoreError, match="that version does not exist"):
        store.set_alias("bot", "prod", 9)
    store.tag(a.digest, "baseline")
    assert store.tags(a.digest) == ["baseline"]
    with pytest.raises(StoreError, match="not valid"):
        store.add_version("bad name!", a.digest)


def test_lineage_rm_and_prune(store: Store) -> None:
    root = put(store, "root", name="raw")
    mid = put(store, "mid", parents=[root.digest])
    leaf = put(store, "leaf", parents=[mid.digest], name="final")
    up = store.lineage(leaf.digest)
    assert up["children"][0]["digest"] == mid.digest
    assert up["children"][0]["children"][0]["digest"] == root.digest
    assert up["children"][0]["children"][0]["names"] == ["raw:1"]
    down = store.lineage(root.digest, direction="down")
    assert down["children"][0]["children"][0]["digest"] == leaf.digest

    with pytest.raises(StoreError, match="descendant"):
        store.remove(root.digest)
    orphan = put(store, "unreferenced")
    report = store.gc(prune=True)
    assert report["pruned"] == [orphan.digest]
    assert store.exists(mid.digest), "an unnamed ancestor of a named artifact is kept"
    removed = store.remove(root.digest, force=True)
    assert set(removed) == {root.digest, mid.digest, leaf.digest}
    assert not (store.artifacts / leaf.digest).exists()
    with pytest.raises(StoreError):
        store.lookup("final")


def test_verify_catches_a_flipped_byte(store: Store) -> None:
    art = put(store, "precious weights", name="m")
    assert store.verify() == [{"digest": art.digest, "names": ["m:1"], "ok": True, "problem": None}]
    target = art.path / "sub" / "x.bin"
    data = bytearray(target.read_bytes())
    data[3] ^= 0x01
    target.write_bytes(bytes(data))
    [row] = store.verify()
    assert not row["ok"] and "corrupt" in row["problem"]
    with pytest.raises(IntegrityError):
        art.verify()


def test_crash_before_index_is_invisible_then_adopted(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a, **k):
        raise OSError("power cut")

    monkeypatch.setattr(store, "_index", boom)
    with pytest.raises(OSError):
        put(store, "half")
    monkeypatch.undo()
    digest = next(p.name for p in store.artifacts.iterdir() if not p.name.startswith("."))
    assert not store.exists(digest)
    assert store.artifacts_list(named_only=False) == []
    report = store.gc()
    assert report["adopted"] == [digest]
    assert store.get(digest).manifest.digest == digest


def test_gc_removes_corrupt_orphans_and_dead_temp_dirs(store: Store) -> None:
    bogus = store.artifacts / ("0" * 64)
    bogus.mkdir()
    (bogus / "manifest.json").write_text("{not json")
    dead = store.tmp / "999999999-deadbeef"
    dead.mkdir()
    (dead / "partial.bin").write_bytes(b"x")
    report = store.gc()
    assert report["orphans_removed"] == ["0" * 64]
    assert report["temp_removed"] == ["999999999-deadbeef"]
    assert not bogus.exists() and not dead.exists()


def test_empty_artifact_refused(store: Store) -> None:
    with store.staging() as tmp, pytest.raises(StoreError, match="empty"):
        store.commit(tmp, kind="dataset", format="jsonl")


def test_schema_is_migrated_once_and_reopened(slmops_home: Path) -> None:
    s1 = Store(slmops_home)
    put(s1, "x", name="n")
    s1.close()
    s2 = Store(slmops_home)
    assert s2.schema_version >= 1
    assert s2.lookup("n").kind == "dataset"
    assert s2._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s2.close()
