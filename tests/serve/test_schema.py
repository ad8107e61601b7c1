"""Schemathesis fuzzes every operation of our OpenAPI schema against a live server: no input may cause a 5xx.

Runs the ``st`` CLI (schemathesis 4) as a subprocess against the server in this process, with a
fixed seed and a bounded number of examples and time, so it is reproducible and stays short.
Skipped when schemathesis is not installed (it is in the ``dev`` extra).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest


def _st() -> str | None:
    exe = Path(sys.executable).with_name("st")
    return str(exe) if exe.exists() else shutil.which("st")


def test_openapi_schema_lists_our_routes(start_server: Any) -> None:
    server = start_server(models=["bot"])
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    for p in ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/openai/loadedmodels",
              "/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
        assert p in paths


@pytest.mark.skipif(_st() is None, reason="schemathesis is not installed (pip install 'slmops[dev]')")
@pytest.mark.parametrize("budget_s", [pytest.param(15, id="quick"), pytest.param(120, id="long", marks=pytest.mark.slow)])
def test_schemathesis_finds_no_server_errors(start_server: Any, tmp_path: Path, budget_s: int) -> None:
    server = start_server(models=["bot", "bot-lora"], default_max_tokens=8, max_queue=64, timeout_s=30)
    cmd = [
        _st(), "run", f"{server.url}/openapi.json",
        "--checks", "not_a_server_error",
        "--max-examples", "25" if budget_s > 60 else "10",
        "--seed", "1",
        "--workers", "1",
        "--max-time", str(budget_s),
        "--request-timeout", "30",
        "--phases", "examples,coverage,fuzzing",
        "--suppress-health-check", "all",
        "--exclude-path-regex", "^/openai/unload/",  # unloading while fuzzing is fine, but would only reload models
    ]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=budget_s + 120, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert " passed" in out and "failed" not in out.split("SUMMARY")[-1]


def test_importing_the_serve_package_is_light() -> None:
    import subprocess
    import sys

    code = "import sys, slmops.serve, slmops.cli.main\nprint(' '.join(m for m in ('fastapi', 'torch', 'uvicorn', 'prometheus_client') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []
