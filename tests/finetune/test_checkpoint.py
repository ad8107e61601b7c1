"""Checkpoints: atomic writes, damaged-checkpoint fallback, RNG/optimizer round trips, in-process resume equality."""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path

import pytest

from tests.finetune.conftest import FAST


def _tiny_training_state(steps: int = 2):
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    for _ in range(steps):
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return model, opt, sched


def test_round_trip_restores_weights_optimizer_scheduler_and_rng(tmp_path: Path) -> None:
    import numpy as np
    import torch

    from slmops.finetune import checkpoint as ckpt

    model, opt, sched = _tiny_training_state()
    ckpt.save_checkpoint(tmp_path, 2, model=model, optimizer=opt, scheduler=sched, state={"epoch": 0, "group": 2})
    expected = (torch.rand(3), np.random.rand(), random.random())
    model2, opt2, sched2 = _tiny_training_state(steps=0)
    found = ckpt.latest_checkpoint(tmp_path)
    assert found is not None and found.step == 2 and found.state["group"] == 2
    model2.load_state_dict(found.weights())
    opt2.load_state_dict(found.optimizer_state())
    sched2.load_state_dict(found.state["scheduler"])
    found.restore_rng()
    assert (torch.rand(3), np.random.rand(), random.random())[1:] == expected[1:]
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], opt2.state_dict()["state"][0]["exp_avg"])
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_a_crash_while_saving_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from slmops.finetune import checkpoint as ckpt

    model, opt, sched = _tiny_training_state()
    ckpt.save_checkpoint(tmp_path, 2, model=model, optimizer=opt, scheduler=sched, state={})

    def crash(*a, **k):  # the process "dies" half-way: weights written, optimizer not
        raise OSError("disk unplugged")

    monkeypatch.setattr(ckpt, "_write_optimizer", crash)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(tmp_path, 4, model=model, optimizer=opt, scheduler=sched, state={})
    assert not (tmp_path / "step-00000004").exists()
    found = ckpt.latest_checkpoint(tmp_path)
    assert found is not None and found.step == 2
    found.weights(), found.optimizer_state()  # loadable


def test_a_half_written_temp_dir_and_a_damaged_checkpoint_are_skipped(tmp_path: Path) -> None:
    from slmops.finetune import checkpoint as ckpt

    model, opt, sched = _tiny_training_state()
    for step in (2, 4):
        ckpt.save_checkpoint(tmp_path, step, model=model, optimizer=opt, scheduler=sched, state={})
    (tmp_path / ".tmp-step-00000006").mkdir()  # what a SIGKILL during a save leaves
    (tmp_path / ".tmp-step-00000006" / "weights.safetensors").write_bytes(b"partial")
    weights = tmp_path / "step-00000004" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])  # bit rot in the newest one
    found = ckpt.latest_checkpoint(tmp_path)
    assert found is not None and found.step == 2
    ckpt.save_checkpoint(tmp_path, 8, model=model, optimizer=opt, scheduler=sched, state={}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000004", "step-00000008"]


def _curves(art) -> dict:
    return json.loads((art.path / "training" / "curves.json").read_text())


def test_interrupted_run_resumes_to_the_same_losses(ft_store, base, task, store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Crash at step 7 (checkpoint at 4), run again: the result equals an uninterrupted run."""
    from slmops.finetune import history
    from slmops.finetune.api import finetune

    cfg = {**FAST, "eval_every": 4}
    reference = finetune(base, task, method="lora", config=cfg, store=store).artifact  # own store: own run dir

    original = history.History.add_train

    def crash_at_7(self, step, **kw):
        original(self, step, **kw)
        if step == 7:
            raise RuntimeError("power cut")

    monkeypatch.setattr(history.History, "add_train", crash_at_7)
    with pytest.raises(RuntimeError, match="power cut"):
        finetune(base, task, method="lora", config=cfg, options={"save_every": 4}, store=ft_store)
    monkeypatch.setattr(history.History, "add_train", original)
    resumed = finetune(base, task, method="lora", config=cfg, options={"save_every": 4, "resume": "always"}, store=ft_store).artifact
    assert resumed.manifest.metrics["resumed_from_step"] == 4
    assert _curves(resumed) == _curves(reference)
    assert (resumed.path / "adapter_model.safetensors").read_bytes() == (reference.path / "adapter_model.safetensors").read_bytes()
    assert resumed.manifest.meta["run_dir"] is None  # checkpoints are removed after success
    m = resumed.manifest.metrics  # tokens/s covers the whole run (both segments), the resumed segment's is apart
    assert m["train_tokens_per_s"] == pytest.approx(m["tokens"] / m["train_seconds"], rel=0.01)
    assert m["segment_tokens_per_s"] > 0 and reference.manifest.metrics["segment_tokens_per_s"] is None


def test_sigterm_in_process_writes_a_checkpoint(ft_store, base, task, monkeypatch: pytest.MonkeyPatch) -> None:
    from slmops.finetune import checkpoint as ckpt
    from slmops.finetune import history
    from slmops.finetune.api import finetune
    from slmops.finetune.runs import TrainingInterrupted

    original = history.History.add_train

    def term_at_3(self, step, **kw):
        original(self, step, **kw)
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(history.History, "add_train", term_at_3)
    cfg = {**FAST, "seed": 7}
    with pytest.raises(TrainingInterrupted) as exc:
        finetune(base, task, method="lora", config=cfg, options={"save_every": 0}, store=ft_store)
    # the flag is read with the step's statistics, so the step after the signal is the one saved
    assert exc.value.exit_code == 143 and "stopped by SIGTERM at step 4 of 12" in exc.value.message
    found = [ckpt.latest_checkpoint(p / "checkpoints") for p in (ft_store.home / "runs").iterdir()]
    states = [f.state for f in found if f is not None and f.state.get("reason") == "signal"]
    assert len(states) == 1 and states[0]["step"] == 4
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))
