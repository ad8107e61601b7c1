"""Digest verification on load: damaged weights fail generate, eval and serve with one line; intact ones are hashed once.

Also: a folder that holds a ``manifest.json`` resolves by its own files, not by the digest its
manifest claims (issue 17, items 6 and 10).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from slmops.errors import IntegrityError, RefError
from slmops.models.loading import model_folder
from slmops.runtimes import open_runtime
from slmops.store import Store, resolve
from slmops.store.verified import is_verified
from slmops.testing.tiny import tiny_model


def flip_byte(path: Path, offset: int = -5) -> bytes:
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[offset] ^= 0xFF
    path.write_bytes(bytes(damaged))
    return original


def test_damaged_weights_are_refused_by_generate_eval_and_serve(store: Store, cli) -> None:
    from slmops.serve import ServeConfig, create_app
    from slmops.testing.server import running_server

    art = tiny_model("llama", store=store, name="bot")
    assert is_verified(art)  # the commit hashed it: its first load hashes nothing
    weights = art.path / "model.safetensors"
    original = flip_byte(weights)
    assert not is_verified(art)  # any write to a file invalidates the cached check

    for ref in (art, "bot:1"):
        with pytest.raises(IntegrityError, match=r"artifact bot:1 \(sha256:\w{12}\) is damaged.*models verify.*re-import"):
            open_runtime(ref)
    with pytest.raises(IntegrityError, match=r"artifact bot \(bot:1, sha256:\w{12}\) is damaged"):
        open_runtime("bot")
    with pytest.raises(IntegrityError, match="is damaged"):
        open_runtime(str(art.path))

    proc = subprocess.run([sys.executable, "-m", "slmops", "generate", "bot", "hello", "--max-tokens", "2"],
                          capture_output=True, text=True, timeout=300, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert re.match(r"error: artifact bot:1 \(sha256:\w{12}\) is damaged: .*; run `slmops models verify`", lines[0]), lines[0]

    assert cli("data", "synth", "support-intent", "--n", "12", "--name", "d").code == 0
    r = cli("eval", "bot", "--data", "d", "--limit", "2")
    assert r.code == 1 and "bot:1" in r.err and "is damaged" in r.err, r.err

    with running_server(create_app(ServeConfig(models=["bot"]), store=store)) as url:
        resp = httpx.post(f"{url}/v1/chat/completions", json={"model": "bot", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert resp.status_code >= 400 and "is damaged" in resp.json()["error"]["message"], resp.text

    # the fix the message names: re-running the step that made it replaces the damaged copy
    assert tiny_model("llama", store=store, name="bot").digest == art.digest
    assert weights.read_bytes() == original and is_verified(art)
    open_runtime("bot").close()


def test_the_check_is_cached_until_a_file_changes(store: Store, tmp_path: Path) -> None:
    with store.staging() as tmp:
        (tmp / "config.json").write_text("{}")
        (tmp / "model.safetensors").write_bytes(b"w" * 4096)
        art = store.commit(tmp, kind="model", format="hf-safetensors", name="m")
    assert is_verified(art)
    shutil.rmtree(store.home / "cache" / "verified")  # an artifact from before this version: hashed on first load
    assert not is_verified(art)
    with pytest.raises(Exception) as info:  # past the check, the engine refuses these junk weights
        open_runtime(art)
    assert not isinstance(info.value, IntegrityError)
    assert is_verified(art)
    (art.path / "extra.txt").write_text("added")  # a file added counts as a change too
    with pytest.raises(IntegrityError, match=r"artifact m:1 \(sha256:\w{12}\) is damaged"):
        open_runtime(art)
    with pytest.raises(IntegrityError, match="is damaged"):  # training and export load through model_folder
        model_folder(art)
    assert store.verify([art.digest])[0]["ok"] is False


def _put(store: Store, text: str, name: str, fmt: str = "x", kind: str = "dataset"):
    with store.staging() as tmp:
        (tmp / "f").write_text(text)
        return store.commit(tmp, kind=kind, format=fmt, name=name)


def test_folder_with_a_manifest_resolves_by_its_own_files(store: Store, tmp_path: Path) -> None:
    art = _put(store, "one", "n")
    copy = tmp_path / "copy"
    shutil.copytree(art.path, copy)
    assert resolve(str(copy), store).digest == art.digest  # same files, same content: the stored artifact
    (copy / "f").write_text("edited")
    with pytest.raises(RefError, match=r"copy does not match its manifest.json: its files hash to \w{12}, the manifest says \w{12}; remove manifest.json"):
        resolve(str(copy), store)

    model = _put(store, "weights", "mdl", fmt="hf-safetensors", kind="model")
    mcopy = tmp_path / "mcopy"
    shutil.copytree(model.path, mcopy)
    (mcopy / "f").write_text("other weights")
    with pytest.raises(IntegrityError, match="is damaged"):  # a runtime opening the folder checks it too
        open_runtime(mcopy)
