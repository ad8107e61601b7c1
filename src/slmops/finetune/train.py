"""The body of the ``finetune.*`` stages: checks, data, model, loop, and the output folder.

Order matters for quick failure: settings that do not fit the model (``--max-length`` above its
context, unknown ``--target-modules``) fail before any data is tokenized or weight is loaded;
data errors (a record without an answer, nothing left after truncation) fail before the model is
loaded. Output:

* LoRA / DoRA / QLoRA: a standard PEFT folder (``adapter_config.json`` +
  ``adapter_model.safetensors``) — kind ``adapter``, format ``peft``.
* full: a complete Hugging Face folder with the base's tokenizer files — kind ``model``.
* both: ``training/curves.json`` and ``training/curves.csv`` (per-step loss, lr, grad norm, tokens,
  and the validation evaluations).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import sys
from pathlib import Path
from typing import Any

from slmops._optional import require
from slmops.errors import ConfigError
from slmops.finetune import checkpoint as ckpt
from slmops.finetune import loop
from slmops.finetune.adapters import normalize_adapter_config
from slmops.finetune.config import LoraConfig, TrainConfig
from slmops.finetune.data import build_data
from slmops.finetune.evaluation import exact_match
from slmops.finetune.methods import check_method_config, context_length, prepare, set_checkpointing
from slmops.finetune.runs import StopSignal
from slmops.models.loading import load_tokenizer, model_folder, quiet_progress
from slmops.stage import StageContext, StageOutput
from slmops.store.artifact import Artifact
from slmops.store.locks import run_lock

log = logging.getLogger(__name__)

MAX_DEFAULT_LENGTH = 2048
_NOT_TOKENIZER = {"config.json", "generation_config.json", "manifest.json", "README.md"}


def peak_rss_mb() -> float | None:
    """This process's peak resident set size so far, in MiB (None where the OS does not say)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def seed_everything(seed: int) -> None:
    torch = require("torch", extra="train")
    np = require("numpy", extra="train")
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def make_accelerator(cfg: TrainConfig) -> Any:
    """A fresh ``Accelerator`` (the distributed state set up by ``accelerate launch`` is kept)."""
    torch = require("torch", extra="train")
    accelerate = require("accelerate", extra="train", purpose="fine-tuning")
    from accelerate.state import AcceleratorState

    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("--mixed-precision fp16 needs a GPU", fix="use bf16 or no on CPU")
    AcceleratorState._reset_state()  # a new config per run in one process (tests, search)
    # cpu=True without CUDA: under torchrun/accelerate launch on CPUs this selects gloo data parallelism
    return accelerate.Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())


def check_inputs(inputs: dict[str, Artifact], cfg: TrainConfig) -> int:
    """Kinds of the inputs and ``--max-length`` against the model; returns the max length to use."""
    model, data = inputs["model"], inputs["data"]
    if model.kind != "model":
        raise ConfigError(f"--model sha256:{model.short} is a {model.kind}, not a model",
                          fix="fine-tune a base model (merge an adapter first with `slmops adapters merge`)")
    if data.kind != "dataset":
        raise ConfigError(f"--data sha256:{data.short} is a {data.kind}, not a dataset", fix="pass a dataset (slmops data import/synth)")
    ctx = context_length(model)
    if cfg.max_length is not None and ctx is not None and cfg.max_length > ctx:
        raise ConfigError(f"--max-length {cfg.max_length} is above the model's context length ({ctx})",
                          why="positions past the context were never trained and may not exist", fix=f"use --max-length {ctx} or less")
    return cfg.max_length or min(ctx or MAX_DEFAULT_LENGTH, MAX_DEFAULT_LENGTH)


def _copy_tokenizer(base: Path, out: Path) -> None:
    for f in sorted(base.iterdir()):
        if f.is_file() and f.name not in _NOT_TOKENIZER and not f.name.endswith((".safetensors", ".safetensors.index.json")):
            shutil.copyfile(f, out / f.name)


def write_model(method: str, model: Any, base: Artifact, out: Path) -> None:
    """Save the trained weights: a PEFT folder (adapters) or a full HF folder with the base's tokenizer."""
    with quiet_progress():
        if method == "full":
            model.config.use_cache = True
            set_checkpointing(model, False)
            model.save_pretrained(str(out), safe_serialization=True)
            _copy_tokenizer(model_folder(base), out)
        else:
            model.save_pretrained(str(out), safe_serialization=True)
            (out / "README.md").unlink(missing_ok=True)  # PEFT's model card template; the manifest says it all
            normalize_adapter_config(out)


def write_curves(history: Any, out: Path, *, record: dict[str, Any]) -> None:
    """``training/curves.json|csv`` and ``training/config.json`` (method, resolved config, inputs, eval results).

    The config file makes every distinct config a distinct artifact: without it, two configs that
    train identical weights (``--eval-generate`` on or off, another ``--adapter-name``) would share
    one digest and the first run's manifest.
    """
    folder = out / "training"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    (folder / "curves.json").write_text(json.dumps(history.curves(), indent=1, sort_keys=True) + "\n")
    (folder / "curves.csv").write_text(history.csv())


def run_finetune(method: str, inputs: dict[str, Artifact], cfg: TrainConfig, ctx: StageContext, *, loss_fn: Any = None) -> StageOutput:
    """Train ``inputs['model']`` on ``inputs['data']`` with ``method`` into ``ctx.out``; checkpoints in ``ctx.workdir``.

    Another stage on this engine (``distill.train``) passes its own context, so its run has its own work dir.
    """
    options, out, key, folder = ctx.options, ctx.out, ctx.key, ctx.workdir
    base, dataset = inputs["model"], inputs["data"]
    max_length = check_inputs(inputs, cfg)
    targets = check_method_config(base, method, cfg)
    accelerator = make_accelerator(cfg)
    stop = StopSignal()
    with run_lock(folder, activity="training this exact run", enabled=accelerator.is_local_main_process,
                  fix="wait for it to finish (or stop it); its checkpoints are then picked up with --resume"), stop.installed():
        seed_everything(cfg.seed)
        tokenizer = load_tokenizer(base)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        data = build_data(tokenizer, dataset, cfg, max_length=max_length)
        prepared = prepare(base, method, cfg, device=accelerator.device, targets=targets)
        label = f"finetune {method}" + (f" {cfg.adapter_name}" if isinstance(cfg, LoraConfig) and cfg.adapter_name != "default" else "")
        result = loop.train(prepared.model, data, cfg, pad_id=pad_id, accelerator=accelerator, folder=folder, options=options,
                            description=label, stop=stop, loss_fn=loss_fn)
        model = prepared.model
        em = None
        if cfg.eval_generate and data.validation_records:
            em = exact_match(model, tokenizer, data.validation_records, template=cfg.text_template,
                             max_new_tokens=cfg.eval_max_new_tokens, device=accelerator.device)
        write_model(method, model, base, out)
        record = {"method": method, "config": cfg.model_dump(mode="json"), "base": base.digest, "data": dataset.digest,
                  "val_exact_match": em}
        write_curves(result.history, out, record=record)
        accelerator.wait_for_everyone()
    if accelerator.is_main_process and not options.keep_run_dir:
        ckpt.clear(folder / "checkpoints")
        for best in folder.glob("best-*"):
            ckpt.clear(best)
        if not (folder / "tensorboard").exists():
            shutil.rmtree(folder, ignore_errors=True)

    h = result.history
    final_eval = h.eval_at(result.restored_best_step) if result.restored_best_step is not None else (h.evals[-1] if h.evals else None)
    metrics: dict[str, Any] = {
        "val_loss_start": h.first_val,
        "val_loss": final_eval["val_loss"] if final_eval else None,
        "val_token_accuracy": final_eval.get("val_token_accuracy") if final_eval else None,
        "best_val_loss": h.best_val,
        "best_step": h.best_step,
        "train_loss": h.last_loss,
        "steps": result.step,
        "total_steps": result.total_steps,
        "epochs": result.epochs,
        "tokens": h.tokens,
        "train_tokens_per_s": round(result.tokens_per_s, 2),  # whole run, resumed segments included
        "segment_tokens_per_s": round(result.segment_tokens_per_s, 2) if result.resumed_from is not None else None,
        "train_seconds": round(result.train_seconds, 3),
        "peak_rss_mb": peak_rss_mb(),
        "stopped": result.stopped,
        "overfit_step": h.overfit_step,
        "resumed_from_step": result.resumed_from,
        "trainable_params": prepared.facts["trainable_params"],
        "total_params": prepared.facts["total_params"],
        "trainable_pct": prepared.facts["trainable_pct"],
        **{k: v for k, v in data.counts.items() if isinstance(v, int)},
    }
    if em is not None:
        metrics["val_exact_match"] = em
    inherited = ("arch", "model_type", "architecture", "parameters", "vocab_size", "context_length", "dims", "tokenizer")
    meta: dict[str, Any] = {
        **{k: base.manifest.meta[k] for k in inherited if k in base.manifest.meta},
        **{k: v for k, v in prepared.facts.items() if k not in ("trainable_params", "total_params", "trainable_pct")},
        "base": base.digest,
        "data": dataset.digest,
        "run_key": key,
        "run_dir": str(folder) if folder.exists() else None,
        "data_counts": data.counts,
        "world_size": accelerator.num_processes,
        "device": str(accelerator.device),
        "restored_best_step": result.restored_best_step,
    }
    kind, fmt = ("model", "hf-safetensors") if method == "full" else ("adapter", "peft")
    return StageOutput(metrics=metrics, meta=meta, kind=kind, format=fmt)
