"""The one fresh-process path (``bench.worker.run_fresh``): results, progress, slmops errors and crashes come back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from slmops.bench.memory import peak_rss_bytes
from slmops.bench.worker import run_fresh
from slmops.errors import SlmopsError


def test_a_fresh_process_measures_its_own_memory(model: Any) -> None:
    """The speed probe of the optimizer and the distillation report go through the same runner as ``bench``."""
    from slmops.export.measure import measure_in_subprocess

    ballast = bytearray(300 * 2**20)  # this process holds 300 MB more than the child will
    ballast[::4096] = b"x" * len(ballast[::4096])
    m = measure_in_subprocess(model.path, prompt_tokens=8, new_tokens=4, runs=1)
    assert m["runtime"] == "torch" and m["decode_tokens_per_s"] > 0 and m["load_s"] > 0
    assert 0 < m["peak_rss_bytes"] < peak_rss_bytes() - 200 * 2**20, "the child's peak is its own, not this process's"


def test_progress_is_relayed_and_errors_come_back_as_themselves(model: Any) -> None:
    from slmops.bench.config import BenchConfig

    cfg = BenchConfig(prompt_tokens=[4], output_tokens=[2], warmup=0, repetitions=2)
    got = run_fresh("slmops.bench.local:bench_fresh", {"model_path": str(model.path), "config": cfg.model_dump(mode="json")},
                    label="bench", total=2)
    assert got["memory"]["isolated"] is True and got["cells"][0]["completed"] == 2
    with pytest.raises(SlmopsError) as exc:  # an slmops error in the child keeps its what/why/fix
        run_fresh("slmops.export.measure:measure_fresh", {"path": str(Path(model.path) / "missing")}, label="measure")
    assert "missing" in exc.value.message and "the measuring process died" not in exc.value.message


def test_only_slmops_functions_run_and_a_dead_child_is_reported() -> None:
    with pytest.raises(SlmopsError, match="the measuring process died: not an slmops function: 'os:getcwd'"):
        run_fresh("os:getcwd", {}, label="probe")
    with pytest.raises(SlmopsError, match="probe: the measuring process died: .*TypeError"):
        run_fresh("slmops.bench.memory:dir_size", {"nonsense": 1}, label="probe", fix="x")
