"""The ``models`` and ``data`` verbs and ``doctor`` through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_doctor_json(cli) -> None:
    r = cli("doctor", "--json")
    assert r.code == 0, r.err
    d = r.json
    assert d["cores"] >= 1 and d["memory"]["total"] > 0 and d["disk_free_bytes"] > 0
    assert "features" in d["cpu"] and set(d["extras"]) >= {"train", "onnx", "gguf", "serve"}
    assert d["extras"]["train"]["torch"].startswith("2.13.0")


def test_python_dash_m_and_help() -> None:
    out = subprocess.run([sys.executable, "-m", "slmops", "--help"], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and "models" in out.stdout and "doctor" in out.stdout
    out = subprocess.run([sys.executable, "-m", "slmops", "models", "rm", "--help"], capture_output=True, text=True, check=False)
    assert "--force" in out.stdout


def test_data_import_reports_line_numbers(cli, tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text('{"input": "a", "output": "b"}\n{"input": "c", "output": "d"}\n{not json\n{"messages": []}\n')
    r = cli("data", "import", str(f), "--name", "d")
    assert r.code == 1
    assert "bad.jsonl:3" in r.err and "bad.jsonl:4" in r.err and "--skip-invalid" in r.err
    r = cli("data", "import", str(f), "--name", "d", "--skip-invalid", "--json")
    assert r.code == 0, r.err
    assert r.json["metrics"] == {"records": 2, "invalid": 2}


def test_synth_split_inspect_lineage_alias_tag_rm(cli, tmp_path: Path) -> None:
    r = cli("data", "synth", "support-intent", "--n", "60", "--name", "support", "--json")
    assert r.code == 0, r.err
    synth = r.json
    assert synth["metrics"]["records"] == 60 and not synth["cached"]
    assert cli("data", "synth", "support-intent", "--n", "60", "--name", "support", "--json").json["cached"]
    stats = cli("data", "inspect", "support", "--json").json
    assert stats["splits"]["train"]["records"] + stats["splits"]["test"]["records"] + stats["splits"]["validation"]["records"] == 60

    r = cli("data", "dedup", "support", "--name", "support-clean", "--json")
    assert r.code == 0, r.err
    tree = cli("models", "lineage", "support-clean", "--json").json
    assert tree["children"][0]["digest"] == synth["digest"] and tree["children"][0]["role"] == "data"

    assert cli("models", "alias", "support@prod", "support:1").code == 0
    assert cli("models", "show", "support@prod", "--json").json["digest"] == synth["digest"]
    assert cli("models", "tag", "support", "golden", "--json").json["tags"] == ["golden"]
    rows = cli("models", "ls", "--kind", "dataset", "--json").json
    assert {(x["name"], x["version"]) for x in rows} == {("support", 1), ("support-clean", 1)}
    assert [x["aliases"] for x in rows if x["name"] == "support"] == [["prod"]]

    r = cli("models", "rm", "support")
    assert r.code == 1 and "descendant" in r.err and "--force" in r.err
    r = cli("models", "rm", "support", "--force", "--json")
    assert r.code == 0 and len(r.json["removed"]) == 2


def test_verify_detects_tampering_exit_code(cli) -> None:
    r = cli("data", "synth", "arithmetic", "--n", "20", "--name", "math", "--json")
    path = Path(r.json["path"])
    assert cli("models", "verify", "--json").code == 0
    target = path / "train.jsonl"
    target.write_text(target.read_text().replace("plus", "PLUS", 1))
    r = cli("models", "verify", "--json")
    assert r.code == 1
    assert [row["ok"] for row in json.loads(r.out)] == [False]
    assert "failed verification" in r.err


def test_bad_reference_is_one_line_error(cli) -> None:
    r = cli("models", "show", "nobody:3")
    assert r.code == 1 and r.err.count("\n") == 1 and "nobody" in r.err
    r = cli("models", "show", "hf:org/model")
    assert r.code == 1 and "offline" in r.err.lower()
