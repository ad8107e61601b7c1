"""``slmops export gguf|gguf-lora|ollama``, ``slmops parity`` and ``slmops optimize`` end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def test_export_parity_optimize_cli(cli: Any, tmp_path: Path) -> None:
    assert cli("models", "init", "--name", "tiny", "--json").code == 0
    r = cli("export", "gguf", "tiny", "--qtype", "q8_0", "--name", "tiny-q8", "--out", str(tmp_path / "q8"), "--json")
    assert r.code == 0, r.err
    d = r.json
    assert d["kind"] == "gguf" and d["name"] == "tiny-q8:1" and d["meta"]["qtype"] == "q8_0"
    assert sorted(p.name for p in (tmp_path / "q8").iterdir()) == ["gguf.json", "model.gguf"]

    r = cli("export", "ollama", "tiny-q8", "--system", "be brief", "--param", "temperature=0.3", "--out", str(tmp_path / "oll"), "--json")
    assert r.code == 0, r.err
    text = (tmp_path / "oll" / "Modelfile").read_text()
    assert text.startswith("FROM ./model.gguf\nTEMPLATE") and "PARAMETER temperature 0.3" in text
    assert r.json["hints"][0].startswith("ollama create")

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"the quick brown fox number {i} jumps over the lazy dog"}) + "\n" for i in range(6)))
    r = cli("parity", "tiny-q8", "--data", str(data), "--max-texts", "2", "--greedy-prompts", "1", "--json")  # --ref defaults to the model it came from
    assert r.code == 0, r.err
    assert r.json["metrics"]["passed"] and r.json["kind"] == "report"
    r = cli("parity", "tiny-q8", "--ref", "tiny", "--data", str(data), "--max-kl", "1e-12", "--max-texts", "2", "--greedy-prompts", "0")
    assert r.code == 3 and "gate kl_mean<=1e-12 failed at sha256:" in r.err and "(2 more not measured)" in r.err  # KL and top-1 measured; greedy, task skipped

    r = cli("optimize", "tiny", "--data", str(data), "--targets", "gguf:q8_0,gguf:f16", "--max-size", "400KB", "--parity-texts", "2", "--no-isolate")
    assert r.code == 0, r.err
    assert "chosen: gguf:q8_0" in r.out and "size_bytes = 46" in r.out  # f16 (~464 KB) fails --max-size
    r = cli("optimize", "tiny", "--data", str(data), "--targets", "gguf:q8_0", "--max-size", "1kb", "--parity-texts", "2", "--no-isolate")
    assert r.code == 3 and "no candidate passed" in r.err


def test_cli_errors_name_the_flag(cli: Any) -> None:
    assert cli("models", "init", "--name", "tiny", "--json").code == 0
    r = cli("export", "gguf", "tiny", "--qtype", "q9")
    assert r.code == 1 and "--qtype q9 is not supported" in r.err
    r = cli("optimize", "tiny", "--data", "missing.jsonl", "--targets", "gguf:q4")
    assert r.code == 1 and "gguf:q4" in r.err
    r = cli("export", "ollama", "tiny", "--param", "oops")
    assert r.code == 1 and "--param 'oops' is not KEY=VALUE" in r.err
