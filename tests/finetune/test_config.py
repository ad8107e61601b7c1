"""Configs: flag-naming errors, resolved defaults, run options, YAML + flag merge (no torch needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmops.errors import ConfigError
from slmops.finetune.config import make_config, make_options, split_settings
from slmops.stage import RunOptions


def test_rank_must_be_positive_and_the_error_names_the_flag() -> None:
    with pytest.raises(ConfigError) as exc:
        make_config("lora", {"lora_rank": 0})
    assert exc.value.message.startswith("--lora-rank 0 is not valid")
    assert "\n" not in exc.value.message


def test_a_setting_of_another_method_is_named() -> None:
    with pytest.raises(ConfigError) as exc:
        make_config("full", {"lora_rank": 4})
    assert "--lora-rank does not apply to --method full" in exc.value.message


def test_typos_get_a_suggestion() -> None:
    with pytest.raises(ConfigError) as exc:
        make_config("lora", {"lerning_rate": 1e-3})
    assert "learning_rate" in exc.value.message


def test_resolved_defaults() -> None:
    cfg = make_config("dora", {"lora_rank": 4, "target_modules": "q_proj, v_proj"})
    assert cfg.lora_alpha == 8.0 and cfg.target_modules == ["q_proj", "v_proj"]
    assert make_config("full", {}).learning_rate == 5e-5
    with pytest.raises(ConfigError, match="--warmup-steps or --warmup-ratio"):
        make_config("lora", {"warmup_steps": 2, "warmup_ratio": 0.1})
    with pytest.raises(ConfigError, match="cannot be combined"):
        make_config("lora", {"target_modules": "auto,q_proj"})


def test_run_options_stay_out_of_the_config() -> None:
    cfg, opts = split_settings({"lora_rank": 4, "save_every": 5, "report_to": "tensorboard"})
    assert cfg == {"lora_rank": 4}
    o = make_options(opts)
    assert o.save_every == 5 and o.report_to == ["tensorboard"]
    assert isinstance(o, RunOptions) and o.recorded() == {"save_every": 5, "report_to": ["tensorboard"]}
    assert RunOptions().recorded() == {}  # the defaults leave nothing to record
    with pytest.raises(ConfigError, match="--save-every -1 is not valid"):
        make_options({"save_every": -1})


def test_yaml_and_flags_merge_flags_win(tmp_path: Path) -> None:
    from slmops.cli.finetune import merged_settings

    f = tmp_path / "ft.yaml"
    f.write_text("method: dora\nlora-rank: 4\nmax_steps: 10\nsave_every: 3\n")
    method, cfg, opts = merged_settings(f, {"lora_rank": 16, "learning_rate": None}, None)
    assert method == "dora" and cfg == {"lora_rank": 16, "max_steps": 10} and opts == {"save_every": 3}
    method, _, _ = merged_settings(f, {}, "qlora")
    assert method == "qlora"
