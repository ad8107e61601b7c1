"""Real processes, real signals: SIGKILL + --resume gives the losses of an uninterrupted run; SIGTERM checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.finetune.conftest import make_home_with

ARGS = ["finetune", "--model", "tiny", "--data", "support", "--method", "lora", "--learning-rate", "0.005", "--eval-every", "10", "--json"]


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "SLMOPS_HOME": str(home), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _start(home: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "slmops", *ARGS, *extra], env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for_checkpoint(home: Path, proc: subprocess.Popen, timeout: float = 180) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(home.glob("runs/*/checkpoints/step-*"))
        if found:
            return found[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("no checkpoint appeared")


def test_sigkill_then_resume_reproduces_the_uninterrupted_losses(tmp_path: Path) -> None:
    steps = ["--max-steps", "24", "--save-every", "4"]
    home = tmp_path / "home"
    make_home_with(home).close()
    proc = _start(home, *steps)
    _wait_for_checkpoint(home, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not list(home.glob("artifacts/*/adapter_model.safetensors"))  # nothing was committed

    resumed = subprocess.run([sys.executable, "-m", "slmops", *ARGS, *steps, "--resume"], env=_env(home), capture_output=True, text=True,
                             check=False)
    assert resumed.returncode == 0, resumed.stderr
    got = json.loads(resumed.stdout)
    assert 4 <= got["metrics"]["resumed_from_step"] < 24

    # the uninterrupted reference runs the same way (a subprocess, one thread), so float reductions match bit for bit
    ref_home = tmp_path / "reference"
    make_home_with(ref_home).close()  # same base and data digests, its own run dir
    ref = subprocess.run([sys.executable, "-m", "slmops", *ARGS, *steps], env=_env(ref_home), capture_output=True, text=True, check=False)
    assert ref.returncode == 0, ref.stderr
    reference = Path(json.loads(ref.stdout)["path"])
    ref_curves = json.loads((reference / "training" / "curves.json").read_text())
    got_curves = json.loads((Path(got["path"]) / "training" / "curves.json").read_text())
    assert [r["loss"] for r in got_curves["train"]] == [r["loss"] for r in ref_curves["train"]]
    assert got_curves == ref_curves
    assert (Path(got["path"]) / "adapter_model.safetensors").read_bytes() == (reference / "adapter_model.safetensors").read_bytes()


def test_sigterm_saves_a_checkpoint_before_exiting(tmp_path: Path) -> None:
    from slmops.finetune.checkpoint import latest_checkpoint

    home = tmp_path / "home"
    make_home_with(home).close()
    proc = _start(home, "--max-steps", "400", "--save-every", "3")
    first = _wait_for_checkpoint(home, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in err and "--resume" in err
    latest = latest_checkpoint(first.parent)
    assert latest is not None and latest.state["reason"] == "signal" and latest.step >= 3


@pytest.mark.slow
def test_data_parallel_run_under_torchrun_resumes_exactly(tmp_path: Path) -> None:
    """Two CPU processes (gloo DDP): SIGTERM, then --resume, equals an uninterrupted two-process run."""
    launcher = Path(sys.executable).with_name("torchrun")
    if not launcher.exists():
        pytest.skip("torchrun not installed")
    steps = ["--max-steps", "30", "--save-every", "5", "--seed", "11"]

    def launch(home: Path, port: int, *extra: str) -> subprocess.Popen:
        cmd = [str(launcher), "--nproc_per_node", "2", "--master_port", str(port), "-m", "slmops", *ARGS, *steps, *extra]
        return subprocess.Popen(cmd, env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    home, ref = tmp_path / "home", tmp_path / "ref"
    for h in (home, ref):
        make_home_with(h).close()
    proc = launch(home, 29611)
    _wait_for_checkpoint(home, proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=300)
    assert proc.returncode != 0
    resumed = launch(home, 29612, "--resume")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    first = json.loads(out[: out.index("\n}\n") + 3])
    assert first["meta"]["world_size"] == 2 and first["metrics"]["resumed_from_step"] >= 5
    plain = launch(ref, 29613)
    out2, err2 = plain.communicate(timeout=600)
    assert plain.returncode == 0, err2
    other = json.loads(out2[: out2.index("\n}\n") + 3])
    a, b = Path(first["path"]), Path(other["path"])
    assert (a / "adapter_model.safetensors").read_bytes() == (b / "adapter_model.safetensors").read_bytes()
    assert (a / "training" / "curves.json").read_text() == (b / "training" / "curves.json").read_text()
