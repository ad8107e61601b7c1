"""Checking a Foundry Local package in Foundry Local's own runtime (the ``foundry-local-sdk`` wheel).

The SDK pins its own onnxruntime (1.31 for SDK 2.2, next to ``onnxruntime-genai-core``), which
does not co-install with the onnxruntime slmops uses, so the check runs
:mod:`slmops.export.foundry_probe` with another Python: ``python=`` or ``$SLMOPS_FOUNDRY_PYTHON``
(e.g. a virtual environment made with ``python -m venv .venv-foundry && .venv-foundry/bin/pip install
foundry-local-sdk``), else this interpreter when the SDK happens to be importable here. Everything
runs offline: the model is registered in the SDK's local catalog from the package folder, loaded,
and asked one greedy chat turn.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from slmops.errors import ConfigError, SlmopsError
from slmops.export.foundry import find_model_dir

FOUNDRY_PYTHON_ENV = "SLMOPS_FOUNDRY_PYTHON"


class FoundryCheckFailed(SlmopsError):
    """Foundry Local could not load or run a package."""


def foundry_python(python: str | None = None) -> str:
    """The Python with ``foundry-local-sdk``: ``python``, ``$SLMOPS_FOUNDRY_PYTHON``, or this one if it has the SDK."""
    chosen = python or os.environ.get(FOUNDRY_PYTHON_ENV)
    if chosen:
        if not Path(chosen).is_file():
            raise ConfigError(f"no Python at {chosen}", fix=f"point --foundry-python (or ${FOUNDRY_PYTHON_ENV}) at a Python with foundry-local-sdk")
        return chosen
    if importlib.util.find_spec("foundry_local_sdk") is not None:
        return sys.executable
    raise ConfigError(
        "Foundry Local's runtime is not installed",
        why="foundry-local-sdk pins onnxruntime 1.31 and so lives in a virtual environment of its own",
        fix=f"python -m venv .venv-foundry && .venv-foundry/bin/pip install foundry-local-sdk, then pass --foundry-python "
        f".venv-foundry/bin/python (or set ${FOUNDRY_PYTHON_ENV})",
    )


def check_in_foundry(package: Path, messages: list[dict[str, str]], *, python: str | None = None, max_tokens: int = 16,
                     timeout_s: float = 600) -> dict[str, Any]:
    """Register the package's model in Foundry Local (offline), chat once greedily; the probe's result dict."""
    from slmops.export import foundry_probe

    exe = foundry_python(python)
    model_dir = find_model_dir(Path(package))
    model_id = json.loads((model_dir / "inference_model.json").read_text(encoding="utf-8"))["Name"]
    with tempfile.TemporaryDirectory(prefix="slmops-foundry-") as work:
        cmd = [exe, foundry_probe.__file__, "--model-dir", str(model_dir), "--model-id", model_id, "--work", work,
               "--messages", json.dumps(messages), "--max-tokens", str(max_tokens)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HOME": work}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, errors="replace", check=False)
        except subprocess.TimeoutExpired as exc:
            raise FoundryCheckFailed(f"Foundry Local did not answer within {timeout_s:.0f}s", fix="try a smaller model") from exc
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith(foundry_probe.MARKER)), None)
    if proc.returncode != 0 or line is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        raise FoundryCheckFailed(
            f"Foundry Local could not run {model_id}",
            why=tail[-1] if tail else f"exit code {proc.returncode}",
            fix="check the package layout (inference_model.json, genai_config.json) and the SDK version",
        )
    result: dict[str, Any] = json.loads(line[len(foundry_probe.MARKER):])
    result["python"] = exe
    return result


def verify_package(package: Path, *, python: str | None = None, prompt: str = "Tell me about foxes.", max_tokens: int = 16) -> dict[str, Any]:
    """Chat once greedily in Foundry Local and on slmops' ``ort-genai`` runtime; the two replies and whether they match."""
    from slmops.runtimes import GenerationParams
    from slmops.runtimes.ortgenai_rt import OrtGenAIRuntime

    messages = [{"role": "user", "content": prompt}]
    foundry = check_in_foundry(package, messages, python=python, max_tokens=max_tokens)
    with OrtGenAIRuntime.from_path(find_model_dir(Path(package))) as rt:
        ours = rt.generate(rt.apply_chat_template(messages), GenerationParams(max_tokens=max_tokens, temperature=0.0))
    usage = foundry.get("usage") or {}
    return {
        "model_id": foundry["model_id"],
        "foundry_text": foundry["text"],
        "slmops_text": ours.text,
        "text_match": foundry["text"] == ours.text,
        "prompt_tokens_match": usage.get("prompt_tokens") == ours.prompt_tokens,
        "foundry": foundry,
    }
