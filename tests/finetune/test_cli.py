"""The CLI end to end: finetune with YAML + flags, adapters ls/merge/combine, search, --report-to tensorboard."""

from __future__ import annotations

import json
from pathlib import Path

from tests.finetune.conftest import make_home_with


def test_finetune_adapters_and_search_through_the_cli(cli, slmops_home: Path, tmp_path: Path) -> None:
    make_home_with(slmops_home).close()
    cfg = tmp_path / "ft.yaml"
    cfg.write_text("method: lora\nlora_rank: 4\nmax-steps: 8\nlearning_rate: 0.001\nsave_every: 4\n")
    r = cli("finetune", "-m", "tiny", "-d", "support", "-c", str(cfg), "--learning-rate", "0.005", "--adapter-name", "intents",
            "--name", "intents-lora", "--json")
    assert r.code == 0, r.err
    d = r.json
    assert d["kind"] == "adapter" and d["name"] == "intents-lora:1" and d["metrics"]["steps"] == 8
    manifest = json.loads((Path(d["path"]) / "manifest.json").read_text())
    assert manifest["stage"]["config"]["learning_rate"] == 0.005 and manifest["stage"]["config"]["lora_rank"] == 4  # flag beat YAML
    assert manifest["meta"]["run_options"]["save_every"] == 4
    r = cli("finetune", "-m", "tiny", "-d", "support", "--method", "dora", "--max-steps", "4", "--learning-rate", "0.005",
            "--adapter-name", "dora-one")
    assert r.code == 0, r.err
    assert "validation loss:" in r.out and "created adapter" in r.out

    r = cli("adapters", "ls", "tiny", "--json")
    assert r.code == 0 and {row["adapter_name"] for row in r.json} == {"intents", "dora-one"}
    r = cli("adapters", "merge", "tiny", "intents", "--name", "tiny-intents", "--json")
    assert r.code == 0, r.err
    assert r.json["kind"] == "model" and r.json["metrics"]["max_abs_logit_diff"] < 1e-4
    r = cli("adapters", "combine", "tiny", "intents", "intents-lora", "--weights", "0.7,0.3", "--method", "cat", "--json")
    assert r.code == 0, r.err  # the same adapter by adapter name and by registry name: a plain weighted sum
    assert r.json["kind"] == "adapter" and r.json["metrics"]["rank"] == 8
    r = cli("adapters", "combine", "tiny", "intents", "dora-one", "--weights", "0.7,0.3", "--method", "svd")
    assert r.code == 1 and "DoRA" in r.err

    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: {type: float, low: 0.001, high: 0.01, log: true}\n")
    out = tmp_path / "trials.json"
    r = cli("finetune", "search", "-m", "tiny", "-d", "support", "--space", str(space), "--trials", "2", "--strategy", "random",
            "--set", "max_steps=3", "--name", "best-lr", "--out", str(out))
    assert r.code == 0, r.err
    assert "search lora" in r.out and "best-lr:1" in r.err
    assert len(json.loads(out.read_text())["trials"]) == 2


def test_report_to_tensorboard(cli, slmops_home: Path) -> None:
    make_home_with(slmops_home).close()
    r = cli("finetune", "-m", "tiny", "-d", "support", "--max-steps", "3", "--report-to", "tensorboard", "--json")
    assert r.code == 0, r.err
    run_dir = Path(r.json["meta"]["run_dir"])
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert not (run_dir / "checkpoints").exists()
