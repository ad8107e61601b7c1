"""What a user meets in a narrow terminal or a log file: 80-column tables and help, plain progress lines, chat commands, file names.

* at 80 columns the compare table, the recipe summary and ``--help`` keep every value whole;
* with stderr redirected (``| tee``, nohup, CI) progress comes as plain lines at intervals;
* ``/help`` in ``slmops chat`` is answered locally, never sent to the model;
* a bare file name that exists here is that file, not a registry name.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _report() -> dict[str, Any]:
    from slmops.report.compare import build_comparison

    def ev(acc: float, f1: float, size: int, precision: str) -> dict[str, Any]:
        return {"target": {"size_bytes": size, "parameters": 134_515_008, "precision": precision}, "metrics": {"exact_match": acc, "token_f1": f1},
                "counts": {"examples": 40}}

    def bench(e2e: float, rss: int, tps: float) -> dict[str, Any]:
        s = {"ttft_s": {"p50": e2e / 5}, "tpot_s": {"p50": 0.0213}, "e2e_s": {"p50": e2e}, "output_tokens_per_s": tps}
        return {"summary": s, "memory": {"peak_rss_bytes": rss}, "load_s": 1.25, "cells": []}

    evals = [ev(0.75, 0.8123, 540_000_000, "float32"), ev(0.6, 0.7031, 105_000_000, "Q4_K_M"), ev(0.525, 0.6177, 160_000_000, "int4")]
    benches = [bench(2.0, 1_000_000_000, 9.87), bench(0.5, 250_000_000, 46.21), bench(0.6, 300_000_000, 35.5)]
    return build_comparison(["intents-lora", "intents-q4km", "intents-int4"], evals, benches, ref="intents-lora")


def test_compare_table_reads_whole_at_80_columns() -> None:
    from slmops.cli.render import fitted_tables
    from slmops.report.html import table

    head, body = table(_report())
    console = Console(width=80, file=io.StringIO(), record=True)
    for t in fitted_tables(head, body, title="Model comparison", console=console):
        console.print(t)
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for value in ("0.8123", "0.7031", "0.6177", "46.2", "9.9", "100.1 MiB", "+75.0%", "86.6%", "intents-q4km", "134.5M", "21.3 ms"):
        assert value in text, value
    wide = Console(width=250, file=io.StringIO(), record=True)
    tables = fitted_tables(head, body, console=wide)
    assert len(tables) == 1 and len(tables[0].columns) == len(head), "a wide terminal keeps one row per model"


def test_recipe_summary_reads_whole_at_80_columns(cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from slmops.cli import render

    recipe = {"name": "narrow", "steps": {
        "data": {"stage": "data.synth", "config": {"task": "support-intent", "n": 30}, "name": "narrow-support-intent-data"},
        "clean": {"stage": "data.dedup", "inputs": {"data": "${data}"}, "name": "narrow-support-intent-deduplicated"}}}
    path = tmp_path / "narrow.yaml"
    path.write_text(yaml.safe_dump(recipe))
    monkeypatch.setattr(render.out, "width", 80)
    r = cli("run", str(path))
    assert r.code == 0, r.err
    assert "…" not in r.out and "narrow-support-intent-data:1" in r.out
    assert re.search(r"data: records=30\b", r.out), r.out  # the metrics, whole, under the table


def test_help_reads_whole_at_80_columns() -> None:
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": SRC}
    text = subprocess.run([sys.executable, "-m", "slmops", "export", "onnx", "--help"], capture_output=True, text=True, env=env,
                          check=True).stdout
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "int4/int8: weights per quantization block" in text  # a help sentence keeps several words a line
    singles = [line for line in lines if line.startswith(" " * 20) and len(line.split()) == 1]
    assert len(singles) <= 2, singles


def test_progress_is_plain_lines_when_not_a_terminal() -> None:
    from slmops import progress
    from slmops.cli.render import PlainSink
    from slmops.progress import use_sink

    lines: list[str] = []
    now = [0.0]
    sink = PlainSink(lines.append, interval_s=10, step_pct=25, clock=lambda: now[0])
    with use_sink(sink), progress.task("fine-tune lora", total=8) as bar:
        for _ in range(8):
            now[0] += 1.0
            bar.advance(1, loss=1.25, tok_s=312.5)
    assert lines[0] == "fine-tune lora: started (8 steps)"
    assert lines[1].startswith("fine-tune lora: 2/8 (25%), 0:02 elapsed, ~0:06 left") and "loss=1.25" in lines[1]
    assert [ln.split(":")[1].split()[0] for ln in lines[1:-1]] == ["2/8", "4/8", "6/8"]
    assert lines[-1].startswith("fine-tune lora: 8/8 (100%), 0:08, finished")
    lines.clear()
    with use_sink(PlainSink(lines.append, interval_s=10, step_pct=100, clock=lambda: now[0])), progress.task("eval", total=1000) as bar:
        for _ in range(30):
            now[0] += 1.0
            bar.advance(1)
    assert [ln.split(": ")[1].split(",")[0] for ln in lines[1:-1]] == ["10/1000 (1%)", "20/1000 (2%)", "30/1000 (3%)"], "every 10 s"


def test_cli_progress_reaches_a_redirected_stderr(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": SRC, "SLMOPS_HOME": str(tmp_path / "home"), "SLMOPS_PROGRESS_INTERVAL": "0"}
    recipe = {"name": "logged", "steps": {"data": {"stage": "data.synth", "config": {"task": "arithmetic", "n": 20}},
                                          "clean": {"stage": "data.dedup", "inputs": {"data": "${data}"}}}}
    (tmp_path / "logged.yaml").write_text(yaml.safe_dump(recipe))
    with open(tmp_path / "log.txt", "w") as log:  # stderr is a file, as under nohup or `2>&1 | tee`
        r = subprocess.run([sys.executable, "-m", "slmops", "run", "logged.yaml"], stdout=subprocess.DEVNULL, stderr=log, env=env, check=False,
                           cwd=tmp_path, timeout=300)
    text = (tmp_path / "log.txt").read_text()
    assert r.returncode == 0, text
    assert "recipe logged: started (2 steps)" in text and "recipe logged: 1/2 (50%)" in text
    assert text.count("recipe logged: 2/2 (100%)") == 1 and "recipe logged: 2/2 (100%), 0:00, finished" in text
    assert "\x1b[" not in text, "no cursor movement in a log"


def test_bare_file_name_is_the_file_here(cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"text": "hello there"}) + "\n")
    monkeypatch.chdir(tmp_path)
    r = cli("data", "inspect", "prompts.jsonl", "--json")
    assert r.code == 0, r.err
    r = cli("data", "import", "prompts.jsonl", "--name", "prompts.jsonl", "--json")
    assert r.code == 0, r.err
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"text": "a different file now"}) + "\n")
    from slmops.stage.inputs import resolve_input
    from slmops.store import Store

    with Store() as store:
        assert resolve_input("prompts.jsonl", store).digest == store.lookup("prompts.jsonl").digest, "a registered name still wins"


def test_chat_help_is_answered_locally(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from slmops.cli.generate import chat_command

    assert cli("models", "init", "--name", "tiny", "--json").code == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("/help\n/nonsense\n/exit\n"))
    r = cli("chat", "tiny", "--max-tokens", "4")
    assert r.code == 0, r.err
    assert "model>" not in r.out, "nothing was sent to the model"
    assert r.err.count("/reset clears the history") == 2 and "unknown command /nonsense" in r.err
    assert chat_command("what does /help do?") is None and chat_command("/usr/bin/env") is None and chat_command(" /EXIT ") == "/exit"


def test_torch_work_prints_no_library_noise(tmp_path: Path) -> None:
    """No hub-trust WARNING (slmops is offline on purpose) and no transformers FutureWarning raised by PEFT's code."""
    env = {**os.environ, "PYTHONPATH": SRC, "SLMOPS_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    script = (
        "from slmops.stage.runner import run_stage\n"
        "from slmops.store import Store\n"
        "from slmops.testing.tiny import tiny_model\n"
        "from slmops.finetune.api import finetune\n"
        "store = Store()\n"
        "model = tiny_model('llama', store=store)\n"
        "data = run_stage('data.synth', {}, {'task': 'support-intent', 'n': 24}, store=store).artifact\n"
        "finetune(model, data, method='lora', config={'max_steps': 1, 'batch_size': 4}, store=store)\n"
    )
    r = subprocess.run([sys.executable, "-W", "default", "-c", script], capture_output=True, text=True, env=env, timeout=600, check=False)
    assert r.returncode == 0, r.stderr
    assert "trust check" not in r.stderr and "is_gradient_checkpointing" not in r.stderr, r.stderr
