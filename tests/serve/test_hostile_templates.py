"""Models whose own files are hostile or broken (issue 17 items 1 and 10), served for real on 127.0.0.1.

A store of its own holds the tiny ``bot`` and copies of it whose chat template loops for hours
(``loop``), doubles a string until memory runs out (``grow``), does not parse (``broken``) or
reaches for Python internals (``unsafe``), and a GGUF whose bytes are garbage (``damaged``). A
costly template must be stopped at its budget without stalling other models, ``/health`` or
SIGTERM; a broken model is the server's fault (5xx), never the client's (4xx).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_helpers import CHAT

TEMPLATES = {
    "loop": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{ messages[0].content }}",
    "grow": "{% set ns = namespace(s='xxxxxxxx') %}{% for n in [1000, 1000, 256] %}{% set ns.s = ns.s * n %}{% endfor %}{{ ns.s }}",
    "broken": "{% for m in messages %}{{ m.content }",
    "unsafe": "{{ messages.__class__.__mro__[1].__subclasses__() }}",
}


@pytest.fixture(scope="module")
def hostile_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from slmops.store import Store
    from slmops.testing.tiny import tiny_model

    home = tmp_path_factory.mktemp("hostile_home")
    with Store(home) as store:
        bot = tiny_model("llama", store=store, name="bot")
        for name, template in TEMPLATES.items():
            with store.staging() as tmp:
                for f in bot.path.iterdir():
                    if f.name != "manifest.json":
                        shutil.copy2(f, tmp / f.name)
                cfg = json.loads((tmp / "tokenizer_config.json").read_text())
                cfg["chat_template"] = template
                (tmp / "tokenizer_config.json").write_text(json.dumps(cfg))
                store.commit(tmp, kind="model", format=bot.manifest.format, name=name)
        with store.staging() as tmp:
            (tmp / "model.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + os.urandom(4000))
            store.commit(tmp, kind="gguf", format="gguf", name="damaged")
    return home


@pytest.fixture(scope="module")
def server(hostile_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from slmops.serve import ServeConfig, create_app
    from slmops.store import Store
    from slmops.testing.server import running_server

    with Store(hostile_home) as store:
        cfg = ServeConfig(models=["bot", *TEMPLATES, "damaged"], render_timeout_s=1.0, max_loaded=8,
                          request_log=tmp_path_factory.mktemp("logs") / "requests.db")
        app = create_app(cfg, store=store)
        with running_server(app) as url:
            yield url, app


def chat(url: str, model: str, **kw: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json={"model": model, "messages": CHAT, "max_tokens": 2, **kw}, timeout=60)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_a_looping_template_is_stopped_and_other_models_keep_answering(server: Any) -> None:
    url, _ = server
    assert chat(url, "bot").status_code == 200
    slow: dict[str, httpx.Response] = {}
    threads = [threading.Thread(target=lambda i=i: slow.update({str(i): chat(url, "loop")})) for i in range(3)]
    for t in threads:
        t.start()
    for _ in range(3):  # while the costly renders run: other models and /health answer
        assert chat(url, "bot").status_code == 200
        assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"
    for t in threads:
        t.join(timeout=60)
    assert len(slow) == 3
    for r in slow.values():
        assert r.status_code == 500, r.text
        err = r.json()["error"]
        assert err["code"] == "chat_template_error" and err["type"] == "server_error" and "1s" in err["message"]


def test_a_string_building_template_is_stopped_at_its_memory_budget(server: Any) -> None:
    url, _ = server
    before = rss_mb()
    r = chat(url, "grow")
    assert r.status_code == 500 and r.json()["error"]["code"] == "chat_template_error", r.text
    assert "MiB" in r.json()["error"]["message"]
    assert rss_mb() - before < 200, "the server grew while a template built a huge string"
    assert chat(url, "bot").status_code == 200


@pytest.mark.parametrize(("model", "status", "code"), [("broken", 500, "chat_template_error"), ("unsafe", 500, "chat_template_error"),
                                                       ("damaged", 500, "model_load_failed")])
def test_a_broken_model_is_the_servers_fault(server: Any, model: str, status: int, code: str) -> None:
    url, _ = server
    r = chat(url, model)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["type"] == "server_error" and model in err["message"]
    assert f'model="{model}"' in httpx.get(f"{url}/metrics").text


def test_sigterm_stops_a_server_while_a_template_renders(hostile_home: Path, tmp_path: Path) -> None:
    from slmops.testing.server import free_port, wait_until_healthy

    port = free_port()
    env = {**os.environ, "SLMOPS_HOME": str(hostile_home), "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                                                       os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "slmops", "serve", "loop", "--port", str(port), "--render-timeout", "300s",
                             "--preload", "--no-request-log"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until_healthy(proc, port, timeout_s=120, poll_s=0.2)
        answer: dict[str, httpx.Response] = {}
        t = threading.Thread(target=lambda: answer.update(r=chat(f"http://127.0.0.1:{port}", "loop")), daemon=True)
        t.start()
        time.sleep(1.0)  # the render is under way (its budget is 300s)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
        stopped_s = time.monotonic() - t0
        t.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    said = proc.stderr.read().decode() if proc.stderr else ""
    assert "Traceback" not in said and "graceful shutdown exceeded" not in said, said
    assert answer["r"].status_code == 503 and answer["r"].json()["error"]["code"] == "shutting_down"
    print(f"stopped {stopped_s:.1f}s after SIGTERM")


def test_cli_generate_bounds_a_string_building_template(hostile_home: Path) -> None:
    env = {**os.environ, "SLMOPS_HOME": str(hostile_home), "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                                                       os.environ.get("PYTHONPATH", "")])}
    # A fresh parent process reports the peak RSS of the command's own process tree (its render worker
    # included), not of whatever else this test session ran before.
    measure = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print('peak-kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)")
    res = subprocess.run([sys.executable, "-c", measure, sys.executable, "-m", "slmops", "generate", "grow", "hi", "--max-tokens", "2"],
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 1, res.stderr
    said = " ".join(res.stderr.split())
    assert "chat template" in said and "MiB" in said and "Traceback" not in said
    peak = int(said.split("peak-kib ")[1].split()[0])
    assert peak < 1_500_000, f"a process grew to {peak / 1024:.0f} MB"  # KiB; the unbounded render took 11.5 GB
