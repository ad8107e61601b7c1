"""The dashboard: its JSON after real requests, the key on /dashboard/data, and the page rendered by headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from serve_helpers import CHAT

OUT = Path(__file__).resolve().parents[2] / "test-output"


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _browser(url: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = [_chromium() or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp}", "--window-size=1280,900",
            "--virtual-time-budget=5000", *extra, url]
    return subprocess.run(args, capture_output=True, text=True, timeout=90, check=False)


def test_dashboard_names_versions_and_shows_the_users_turn(start_server: Any) -> None:
    """An adapter id's base is shown as ``name:version`` (not ``sha256:…``) and the prompt column starts at the user's turn."""
    from slmops.serve.dashboard.router import prompt_preview

    server = start_server(models=["bot-lora"], log_content=True)
    messages = [{"role": "system", "content": "You are a support bot. Answer with one intent label."},
                {"role": "user", "content": "my card was charged twice"}]
    server.client().chat.completions.create(model="bot-lora", messages=messages, max_tokens=2)
    server.service.requestlog.flush()
    d = httpx.get(f"{server.url}/dashboard/data").json()
    assert [e["label"] for e in d["loaded"]] == ["bot:1"], d["loaded"]
    assert [m["version"] for m in d["models"]] == ["bot-lora:1"]
    assert d["latest"][0]["prompt"] == "my card was charged twice"
    assert prompt_preview('[{"role": "system", "content": "s"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},'
                          ' {"role": "user", "content": "c"}]') == "user: a\nassistant: b\nuser: c"
    assert prompt_preview("plain completion prompt") == "plain completion prompt"


def test_dashboard_after_real_requests(start_server: Any, tmp_path: Path) -> None:
    server = start_server(models=["bot"], api_key="k3y", log_content=True)
    c = server.client(api_key="k3y")
    for i in range(4):
        c.chat.completions.create(model="bot", messages=CHAT, max_tokens=3 + i)
    c.completions.create(model="bot", prompt="hello there", max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=CHAT)
    server.service.requestlog.flush()

    assert httpx.get(f"{server.url}/dashboard/data").status_code == 401
    assert httpx.get(f"{server.url}/dashboard").status_code == 200  # the shell holds no data
    d = httpx.get(f"{server.url}/dashboard/data", headers={"Authorization": "Bearer k3y"}).json()
    bot = next(m for m in d["models"] if m["model"] == "bot")
    assert bot["version"] == "bot:2" and bot["requests_total"] == 5 and bot["latency_p50"] > 0 and bot["ttft_p95"] > 0
    assert bot["tokens_per_s"] > 0 and sum(b["requests"] for b in d["timeline"]) == 6
    assert any(m["errors_total"] == 1 for m in d["models"] if m["model"] == "unknown")  # not the raw id: labels stay bounded
    assert d["loaded"][0]["label"] and d["loaded"][0]["memory_bytes"] > 0
    assert d["latest"][0]["status"] == 404 and "hello there" in d["latest"][1]["prompt"]

    if _chromium() is None:
        pytest.skip("chromium is not installed (make browser, or apt-get install -y chromium)")
    OUT.mkdir(exist_ok=True)
    shot = OUT / "dashboard.png"
    shot.unlink(missing_ok=True)
    url = f"{server.url}/dashboard#key=k3y"
    res = _browser(url, tmp_path / "profile1", f"--screenshot={shot}")
    assert shot.is_file(), res.stderr[-2000:]
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 900)
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "the screenshot looks blank"

    dom = _browser(url, tmp_path / "profile2", "--dump-dom").stdout
    bars = re.findall(r'<rect [^>]*class="bar req"[^>]*data-value="(\d+(?:\.\d+)?)"', dom)
    assert len(bars) == 30 and sum(float(v) for v in bars) == 6, dom[:2000]
    assert 'id="chart-latency"' in dom and "bot:2" in dom and "hello there" in dom and "updated" in dom
