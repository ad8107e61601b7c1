"""Bad input: each is a one-line error (exit 1 in the CLI) that names the flag or the record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.errors import ConfigError, DataError
from tests.finetune.conftest import FAST, make_home_with


def _one_line(exc: BaseException) -> str:
    msg = exc.message  # type: ignore[attr-defined]
    assert "\n" not in msg
    return msg


def test_unknown_target_module(ft_store, base, task) -> None:
    from slmops.finetune.api import finetune

    with pytest.raises(ConfigError) as exc:
        finetune(base, task, method="lora", config={**FAST, "target_modules": "q_proj,qkv_proj"}, store=ft_store)
    msg = _one_line(exc.value)
    assert msg.startswith("--target-modules qkv_proj matches no linear layer of this llama") and "q_proj" in msg


def test_rank_zero(ft_store, base, task) -> None:
    from slmops.finetune.api import finetune

    with pytest.raises(ConfigError) as exc:
        finetune(base, task, method="qlora", config={"lora_rank": 0}, store=ft_store)
    assert _one_line(exc.value).startswith("--lora-rank 0 is not valid")


def test_nothing_left_after_truncation(ft_store, base, task) -> None:
    from slmops.finetune.api import finetune

    with pytest.raises(DataError) as exc:
        finetune(base, task, method="lora", config={**FAST, "max_length": 16}, store=ft_store)
    msg = _one_line(exc.value)
    assert "no training examples left after filtering" in msg and "--max-length 16" in msg


def test_max_length_above_the_context(ft_store, base, task) -> None:
    from slmops.finetune.api import finetune

    with pytest.raises(ConfigError) as exc:
        finetune(base, task, method="full", config={"max_length": 100_000}, store=ft_store)
    assert _one_line(exc.value) .startswith("--max-length 100000 is above the model's context length (512)")


def test_record_without_an_assistant_turn(ft_store, base, tmp_path: Path) -> None:
    from slmops.finetune.api import finetune
    from slmops.stage.inputs import resolve_input

    f = tmp_path / "data.jsonl"
    rows = [{"input": f"question {i}", "output": f"answer {i}"} for i in range(20)]
    rows.insert(5, {"id": "q-no-answer", "prompt": "what is missing here?"})
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = resolve_input(str(f), ft_store, kind="dataset")
    with pytest.raises(DataError) as exc:
        finetune(base, data, method="lora", config={**FAST, "validation_fraction": 0.2, "seed": 2}, store=ft_store)
    msg = _one_line(exc.value)
    assert "record 'q-no-answer' has no assistant turn" in msg


def test_cli_errors_are_one_line_and_exit_1(cli, slmops_home: Path) -> None:
    make_home_with(slmops_home).close()
    r = cli("finetune", "--model", "tiny", "--data", "support", "--method", "lora", "--lora-rank", "-2")
    assert r.code == 1 and r.err.strip().startswith("error: --lora-rank -2 is not valid") and len(r.err.strip().splitlines()) == 1
    r = cli("finetune", "--model", "tiny", "--data", "support", "--method", "full", "--lora-rank", "4")
    assert r.code == 1 and "--lora-rank does not apply to --method full" in r.err
    r = cli("finetune", "--model", "tiny", "--data", "support", "--target-modules", "q_porj", "--max-steps", "2")
    assert r.code == 1 and "--target-modules q_porj matches no linear layer" in r.err and len(r.err.strip().splitlines()) == 1
    r = cli("finetune", "--model", "tiny", "--data", "support", "--method", "sgd")
    assert r.code == 1 and "--method sgd is not a fine-tuning method" in r.err
    r = cli("finetune", "--model", "tiny", "--data", "support", "--resume", "--max-steps", "2")
    assert r.code == 1 and "--resume: there is no checkpoint of this run" in r.err
