"""Edge bundles: profile checks, the files written, checksum refusal, and serving a bundle offline through the openai client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def test_bundle_fits_profile_verifies_and_serves(store: Any, cli: Any, tmp_path: Path) -> None:
    from slmops.deploy.bundle import open_bundle
    from slmops.serve import ServeConfig, create_app
    from slmops.testing.server import running_server
    from slmops.testing.tiny import tiny_model

    model = tiny_model("llama", store=store, name="edge")
    assert cli("profile", "create", "pi", "--max-size", "500MB", "--formats", "hf-safetensors,gguf").code == 0
    assert cli("profile", "create", "gguf-only", "--formats", "gguf").code == 0
    assert cli("profile", "create", "tiny-disk", "--max-size", "1KB").code == 0

    bad = cli("bundle", "edge", "--profile", "gguf-only", "--out", str(tmp_path / "no1"))
    assert bad.code == 1 and "does not fit profile gguf-only" in bad.err and "hf-safetensors" in bad.err
    bad = cli("bundle", "edge", "--profile", "tiny-disk", "--out", str(tmp_path / "no2"))
    assert bad.code == 1 and "size" in bad.err

    out = tmp_path / "bundle"
    res = cli("bundle", "edge", "--profile", "pi", "--out", str(out), "--name", "bot", "--json")
    assert res.code == 0, res.err
    assert res.json["digest"] == model.digest
    for f in ("model/manifest.json", "serve.json", "slmops-serve.service", "Containerfile", "SHA256SUMS"):
        assert (out / f).is_file(), f
    sums = (out / "SHA256SUMS").read_text()
    assert "model/manifest.json" in sums and "serve.json" in sums and "SHA256SUMS" not in sums
    assert "ExecStart=/usr/bin/env slmops serve --bundle" in (out / "slmops-serve.service").read_text()

    bstore, spec = open_bundle(out, home=tmp_path / "device-home")
    assert spec["name"] == "bot"
    with bstore:
        app = create_app(ServeConfig(models=["bot"], log_requests=False), store=bstore)
        with running_server(app) as url:
            import openai

            r = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0).completions.create(model="bot", prompt="hi", max_tokens=2)
            assert r.usage.completion_tokens == 2

    weights = next(p for p in (out / "model").rglob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    res = cli("serve", "--bundle", str(out))
    rel = weights.relative_to(out).as_posix()
    assert res.code == 1 and rel in res.err and "checksum" in res.err
    spec_json = json.loads((out / "serve.json").read_text())
    assert spec_json["profile"] == "pi"


def test_serve_bundle_subprocess_uses_serve_json_port_and_cleans_up(store: Any, cli: Any, tmp_path: Path) -> None:
    """`slmops serve --bundle DIR` as a real process: binds serve.json's port, answers, and leaves no temp store behind."""
    import os
    import signal
    import subprocess
    import sys

    import openai

    from slmops.testing.server import free_port, wait_until_healthy
    from slmops.testing.tiny import tiny_model

    tiny_model("llama", store=store, name="edge")
    assert cli("profile", "create", "any").code == 0
    port = free_port()
    out = tmp_path / "bundle"
    assert cli("bundle", "edge", "--profile", "any", "--out", str(out), "--name", "bot", "--port", str(port)).code == 0
    assert json.loads((out / "serve.json").read_text())["serve"]["port"] == port

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "SLMOPS_HOME": str(tmp_path / "device-home"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "slmops", "serve", "--bundle", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_healthy(proc, port, timeout_s=90)  # on serve.json's port
        assert [p.name for p in tmp.iterdir() if p.name.startswith("slmops-bundle-")]  # the private store lives while serving
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["bot"]
        r = client.chat.completions.create(model="bot", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert r.usage.completion_tokens >= 1
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert not [p.name for p in tmp.iterdir() if p.name.startswith("slmops-bundle-")], "the temporary store was left behind"

    res = cli("serve", "--bundle", str(out), "other-model")
    assert res.code == 1 and "--bundle serves the bundle's own model" in res.err
    res = cli("serve", "--bundle", str(tmp_path))
    assert res.code == 1 and "is not a bundle" in res.err
