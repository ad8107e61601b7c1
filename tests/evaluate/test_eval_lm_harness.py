"""lm-evaluation-harness drives an OpenAI-compatible server (ours and the scripted one) with a local YAML task over JSONL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lm-eval"


def run_harness(tmp_path: Path, model: str, base_url: str, backend: str) -> dict[str, Any]:
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    shutil.copy(EXAMPLE / "intents.jsonl", task_dir / "intents.jsonl")
    yaml = (EXAMPLE / "slmops_intents.yaml").read_text().replace("examples/lm-eval/intents.jsonl", str(task_dir / "intents.jsonl"))
    (task_dir / "slmops_intents.yaml").write_text(yaml)
    endpoint = "chat/completions" if backend == "local-chat-completions" else "completions"
    args = [sys.executable, "-m", "lm_eval", "--model", backend, "--model_args",
            f"model={model},base_url={base_url}/{endpoint},num_concurrent=1,max_retries=1,tokenized_requests=False,tokenizer_backend=None",
            "--tasks", "slmops_intents", "--include_path", str(task_dir), "--output_path", str(tmp_path / "out"), "--limit", "4"]
    if backend == "local-chat-completions":
        args.append("--apply_chat_template")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(args, check=False, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted((tmp_path / "out").rglob("results_*.json"))
    assert results, proc.stdout[-2000:]
    return json.loads(results[-1].read_text())["results"]["slmops_intents"]


@pytest.mark.slow  # importing lm-eval (datasets, pandas …) takes ~30 s per run on 2 cores
@pytest.mark.parametrize("backend", ["local-chat-completions", "local-completions"])
def test_lm_eval_scores_a_server_with_known_answers(tmp_path: Path, label_server: str, backend: str) -> None:
    pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'slmops[harness]')")
    pytest.importorskip("tenacity", reason="lm-eval's API backends need lm-eval[api]")
    res = run_harness(tmp_path, "labeller", label_server, backend)
    assert res["exact_match,none"] == 1.0


@pytest.mark.slow
def test_lm_eval_runs_against_slmops_serve(tmp_path: Path, tiny_server: str) -> None:
    pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'slmops[harness]')")
    pytest.importorskip("tenacity", reason="lm-eval's API backends need lm-eval[api]")
    res = run_harness(tmp_path, "tiny-llama", tiny_server, "local-chat-completions")
    assert 0.0 <= res["exact_match,none"] <= 1.0  # a random tiny model: the point is that the harness runs end to end
