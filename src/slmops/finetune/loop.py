"""The training loop: plain torch under ``accelerate``, deterministic on CPU and exactly resumable.

One optimizer step = ``grad_accum`` micro-batches; the loss is the summed token cross-entropy of
the whole accumulated batch (across processes) divided by its number of answer tokens, so every
answer token weighs the same whatever the batch split. The data order of each epoch is a seeded
shuffle (:func:`slmops.finetune.data.epoch_batches`), so the position in the data is just
``(epoch, step in epoch)``. A checkpoint holds that position, the trainable weights, optimizer,
scheduler, RNG states and history; restoring all of them makes the following steps compute the
same losses, bit for bit on CPU, as a run that was never interrupted.

Under ``accelerate launch`` the same loop runs data-parallel: each process takes its slice of
every global batch, gradients are all-reduced by DDP, losses and counts by ``accelerator.reduce``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmops import progress
from slmops._optional import require
from slmops.errors import ConfigError, MissingDependency
from slmops.finetune import checkpoint as ckpt
from slmops.finetune.config import TrainConfig
from slmops.finetune.data import TrainData, collate, epoch_batches, steps_per_epoch
from slmops.finetune.evaluation import answer_loss_sum, can_select_logits, evaluate, forward_logits, token_loss_sum
from slmops.finetune.history import History
from slmops.finetune.runs import StopSignal, TrainingInterrupted
from slmops.stage import RunOptions

log = logging.getLogger(__name__)


@dataclass
class LoopResult:
    history: History
    step: int
    total_steps: int
    stopped: str  # completed | early_stopping
    resumed_from: int | None
    train_seconds: float
    tokens_per_s: float  # the whole run (every segment, a resumed run included): tokens / training seconds
    segment_tokens_per_s: float  # this process's segment only (differs after a resume)
    restored_best_step: int | None
    epochs: float


def make_optimizer(model: Any, cfg: TrainConfig) -> Any:
    """AdamW (fused where the device has it); weight decay on matrices only (not on biases, norms or other vectors)."""
    torch = require("torch", extra="train")
    decay = [p for _, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for _, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    try:  # the fused kernel (CPU and CUDA) is what transformers.Trainer uses too; one op per step instead of one per tensor
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(groups, lr=cfg.learning_rate)


def make_scheduler(optimizer: Any, cfg: TrainConfig, total: int) -> Any:
    tf = require("transformers", extra="train")
    warmup = cfg.warmup_steps or round(cfg.warmup_ratio * total)
    name = cfg.lr_scheduler
    if name == "constant" and warmup:
        name = "constant_with_warmup"
    return tf.get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)


def _tensorboard(folder: Path, options: RunOptions, is_main: bool) -> Any:
    if "tensorboard" not in options.report_to or not is_main:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise MissingDependency("tensorboard is not installed (needed for --report-to tensorboard)", why=str(exc), fix="pip install tensorboard") from exc
    return SummaryWriter(log_dir=str(folder / "tensorboard"))


def _load_trainable(model: Any, weights: dict[str, Any], where: str) -> None:
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(trainable - set(weights))
    unexpected = sorted(set(weights) - trainable)
    if missing or unexpected:
        raise ConfigError(f"{where} does not fit this model", why=f"missing {missing[:3]}, unexpected {unexpected[:3]}",
                          fix="start over with --no-resume")
    model.load_state_dict(weights, strict=False)


def _save_best(folder: Path, model: Any, step: int) -> None:
    st = require("safetensors.torch", extra="train")
    with ckpt.atomic_dir(folder / f"best-{step:08d}") as tmp:
        st.save_file(ckpt.trainable_state(model), str(tmp / "weights.safetensors"))
    for old in sorted(folder.glob("best-*")):
        if old.name != f"best-{step:08d}":
            ckpt.clear(old)


def _load_best(folder: Path, model: Any, step: int) -> None:
    st = require("safetensors.torch", extra="train")
    _load_trainable(model, st.load_file(str(folder / f"best-{step:08d}" / "weights.safetensors")), "the best-step weights")


def train(
    model: Any,
    data: TrainData,
    cfg: TrainConfig,
    *,
    pad_id: int,
    accelerator: Any,
    folder: Path,
    options: RunOptions,
    description: str,
    stop: StopSignal,
    loss_fn: Callable[[Any, dict[str, Any], Any], Any] | None = None,
) -> LoopResult:
    """Train ``model`` on ``data`` (see the module docstring); checkpoints go to ``folder/checkpoints``."""
    torch = require("torch", extra="train")
    world, rank, is_main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    device = accelerator.device
    n = len(data.train)
    per_epoch = steps_per_epoch(n, cfg.batch_size, cfg.grad_accum, world)
    total = cfg.max_steps or cfg.epochs * per_epoch
    has_val = bool(data.validation)
    if cfg.early_stopping_patience and not has_val:
        raise ConfigError("--early-stopping-patience needs a validation split", fix="pass a dataset with one, or a --validation-fraction above 0")
    eval_bs = cfg.eval_batch_size or cfg.batch_size
    ckpt_root = folder / "checkpoints"
    barrier = accelerator.wait_for_everyone if world > 1 else None

    def reduce(t: Any) -> Any:
        return accelerator.reduce(t, "sum") if world > 1 else t

    def run_eval() -> dict[str, float]:
        return evaluate(model, data.validation, batch_size=eval_bs, pad_id=pad_id, device=device, autocast=accelerator.autocast,
                        reduce=reduce, rank=rank, world=world)

    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, total)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    select = can_select_logits(unwrapped)  # logits only at answer positions

    history, step, epoch, group_idx, resumed_from, train_seconds = History(), 0, 0, 0, None, 0.0
    if options.resume == "never":
        if is_main:
            ckpt.clear(ckpt_root)
        found = None
    else:
        found = ckpt.latest_checkpoint(ckpt_root)
        if found is None and options.resume == "always":
            raise ConfigError("--resume: there is no checkpoint of this run", why=f"{ckpt_root} holds none (a different config or data "
                              "makes a different run; a finished run leaves none)", fix="run without --resume to start from scratch")
    if found is not None:
        st = found.state
        if st.get("total_steps") != total or st.get("world_size") != world:
            raise ConfigError(f"checkpoint {found.path.name} was written by a run of {st.get('total_steps')} steps on "
                              f"{st.get('world_size')} process(es), not {total} on {world}", fix="resume with the same settings, or pass --no-resume")
        _load_trainable(unwrapped, found.weights(), f"checkpoint {found.path.name}")
        optimizer.load_state_dict(found.optimizer_state())
        scheduler.load_state_dict(st["scheduler"])
        history = History.from_state(st["history"])
        step, epoch, group_idx, train_seconds = found.step, st["epoch"], st["group"], float(st.get("train_seconds", 0.0))
        found.restore_rng(rank)
        resumed_from = step
        log.warning("resuming from checkpoint step %d of %d (%s)", step, total, found.path)

    writer = _tensorboard(folder, options, is_main)

    def log_scalars(prefix: str, values: dict[str, Any], at: int) -> None:
        if writer is not None:
            for k, v in values.items():
                if isinstance(v, int | float):
                    writer.add_scalar(f"{prefix}/{k}", v, at)

    def record_eval(at: int) -> bool:
        metrics = run_eval()
        improved = history.add_eval(at, metrics, min_delta=cfg.early_stopping_min_delta, overfit_patience=cfg.overfit_patience)
        log_scalars("val", metrics, at)
        if improved and cfg.early_stopping_patience and cfg.restore_best and is_main:
            _save_best(folder, unwrapped, at)
        return improved

    def save(reason: str) -> Path | None:
        state = {"epoch": epoch, "group": group_idx, "total_steps": total, "world_size": world, "history": history.to_state(),
                 "train_seconds": train_seconds, "reason": reason, "stopped": stopped}
        return ckpt.save_checkpoint(ckpt_root, step, model=unwrapped, optimizer=optimizer, scheduler=scheduler, state=state,
                                    rank=rank, is_main=is_main, barrier=barrier, keep=options.keep_checkpoints)

    stopped = str(found.state.get("stopped") or "completed") if found is not None else "completed"
    if found is None and has_val:
        record_eval(0)
    model.train()
    groups: list[list[list[int]]] = []
    tokens_run, run_seconds = 0, 0.0  # this process's share, for tokens/s
    with progress.task(description, total=total) as bar:
        bar.set(step, loss=history.last_loss or float("nan"), val_loss=history.last_val or float("nan"))
        while step < total and stopped == "completed":
            if not groups:
                batches = epoch_batches(n, cfg.batch_size, seed=cfg.seed, epoch=epoch, rank=rank, world=world)
                groups = [batches[i : i + cfg.grad_accum] for i in range(0, len(batches), cfg.grad_accum)]
            t0 = time.perf_counter()
            micro = [collate([data.train[j] for j in mb], pad_id) for mb in groups[group_idx]]
            label_tokens = reduce(torch.tensor(float(sum(b["label_tokens"] for b in micro)), device=device))
            denom = max(float(label_tokens), 1.0)
            loss_sum = torch.zeros((), device=device)
            for i, batch in enumerate(micro):
                sync = contextlib.nullcontext() if world == 1 or i == len(micro) - 1 else accelerator.no_sync(model)
                with sync, accelerator.autocast():
                    if loss_fn is None:
                        ce, _ = answer_loss_sum(model, batch, device, select=select)
                    else:  # e.g. distillation: (full logits, batch, summed CE) -> summed loss
                        logits = forward_logits(model, batch, device)
                        ce, _ = token_loss_sum(logits, batch["labels"].to(device))
                        ce = loss_fn(logits, batch, ce)
                        del logits  # the [batch, seq, vocab] logits must not outlive their backward
                    loss = ce / denom
                accelerator.backward(loss * world)
                loss_sum += loss.detach()
                del ce, loss
            grad_norm = None
            if cfg.max_grad_norm > 0:
                grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
            lr = float(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            stats = reduce(torch.stack([loss_sum.float(), torch.tensor(float(sum(b["tokens"] for b in micro)), device=device),
                                        torch.tensor(float(stop.requested), device=device)]))
            elapsed = time.perf_counter() - t0
            train_seconds += elapsed
            run_seconds += elapsed
            step += 1
            group_idx += 1
            at_epoch = epoch + group_idx / len(groups)
            if group_idx >= len(groups):
                epoch, group_idx, groups = epoch + 1, 0, []
            loss_value, tokens = float(stats[0]), int(stats[1])
            tokens_run += tokens
            history.add_train(step, epoch=at_epoch, loss=loss_value, lr=lr, grad_norm=grad_norm, tokens=tokens)
            log_scalars("train", {"loss": loss_value, "lr": lr, "grad_norm": grad_norm}, step)
            if has_val and cfg.eval_every and step % cfg.eval_every == 0 and step < total:
                record_eval(step)
                if cfg.early_stopping_patience and history.since_best >= cfg.early_stopping_patience:
                    stopped = "early_stopping"
                    log.warning("early stopping at step %d: no validation-loss improvement in %d evaluations (best %.4f at step %s)",
                                step, history.since_best, history.best_val, history.best_step)
            saved_now = False
            if options.save_every and step % options.save_every == 0 and step < total and stopped == "completed":
                save("periodic")
                saved_now = True
            if stats[2] > 0:
                path = save("signal") if not saved_now else ckpt_root / f"step-{step:08d}"
                signum = stop.signum or signal.SIGTERM
                raise TrainingInterrupted(
                    f"training stopped by {signal.Signals(signum).name} at step {step} of {total}",
                    why=f"a checkpoint was written to {path}",
                    fix="run the same command again (add --resume to insist on continuing) to pick up from there",
                    signum=signum,
                )
            bar.advance(1, loss=loss_value, val_loss=history.last_val if history.last_val is not None else float("nan"),
                        tok_s=tokens_run / max(run_seconds, 1e-9))
        if has_val and history.eval_at(step) is None:
            record_eval(step)
    restored = None
    if cfg.early_stopping_patience and cfg.restore_best and history.best_step is not None and history.best_step != step:
        _load_best(folder, unwrapped, history.best_step)
        restored = history.best_step
        log.info("restored the weights of step %d (best validation loss %.4f)", restored, history.best_val)
    if writer is not None:
        writer.close()
    return LoopResult(
        history=history, step=step, total_steps=total, stopped=stopped, resumed_from=resumed_from, train_seconds=train_seconds,
        tokens_per_s=history.tokens / train_seconds if history.tokens and train_seconds > 0 else 0.0,
        segment_tokens_per_s=tokens_run / max(run_seconds, 1e-9) if tokens_run else 0.0, restored_best_step=restored,
        epochs=history.train[-1]["epoch"] if history.train else 0.0,
    )
