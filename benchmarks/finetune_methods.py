"""Benchmark: full vs LoRA vs DoRA vs QLoRA fine-tuning side by side, and LoRA vs a plain PEFT + Trainer loop.

What it measures, each run in its own fresh process (so peak RSS is that method's alone):

* training tokens/s — steady state: tokens of steps 2..N over the time between the end of step 1
  and the end of step N (no model loading, no evaluation, no checkpointing), both in wall-clock
  seconds and in CPU seconds of the process. With one torch thread per worker (the default) the
  CPU-time figure is what a dedicated core would give, and it stays stable when other jobs share
  the machine; the comparisons use it;
* peak RSS of the process (``ru_maxrss``: loading + training) and the highest RSS seen while
  training;
* trainable parameters and their share.

Part 1, on ``models.init --size small`` (llama, hidden 256, 6 layers, intermediate 1024, ~6M parameters, tokenizer
trained on the task) and the built-in ``support-intent`` task: ``finetune.full|lora|dora|qlora``
through the slmops stages, plus the same LoRA (same rank, alpha, dropout, target modules, data,
batch size, learning rate and schedule) trained by ``transformers.Trainer`` on a ``peft`` model.
Part 2 (``--big``), on a llama big enough for the weights to dominate memory (hidden 1024,
16 layers, ~190M parameters, ~760 MB in fp32): LoRA vs QLoRA peak RSS.

Runs are interleaved (method order rotates each repeat) and the table shows medians.

Run (about 15 minutes on 2 CPU cores; ~6 without ``--big``)::

    .venv/bin/python benchmarks/finetune_methods.py --repeats 3 --big [--out benchmarks/finetune_methods.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

METHODS = ("full", "lora", "dora", "qlora", "trainer-lora")
LR = {"full": 5e-5, "lora": 2e-4, "dora": 2e-4, "qlora": 2e-4, "trainer-lora": 2e-4}


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StepClock:
    """A progress sink that timestamps every training step (and samples RSS) of the fine-tuning task."""

    def __init__(self) -> None:
        self.task: int | None = None
        self.times: list[float] = []
        self.cpu: list[float] = []
        self.rss: list[float] = []

    def start(self, task_id: int, description: str, total: float | None) -> None:
        if self.task is None and description.startswith("finetune"):
            self.task = task_id

    def update(self, task_id: int, completed: float, fields: dict[str, Any]) -> None:
        if task_id == self.task and "tok_s" in fields:
            self.tick()

    def tick(self) -> None:
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())
        self.rss.append(_rss_mb())

    def finish(self, task_id: int) -> None:
        pass


def steady(times: list[float], tokens: list[int]) -> float:
    """Tokens per second over steps 2..N (``tokens`` cumulative, one per step)."""
    if len(times) < 2:
        return float("nan")
    return (tokens[-1] - tokens[0]) / (times[-1] - times[0])


def worker_slmops(a: argparse.Namespace) -> dict[str, Any]:
    from slmops.finetune.api import finetune
    from slmops.progress import use_sink
    from slmops.store import Store

    store = Store()
    clock = StepClock()
    cfg = {"max_steps": a.steps, "batch_size": a.batch, "learning_rate": LR[a.method], "eval_every": 0, "max_length": 512}
    if a.method != "full":
        cfg["lora_rank"] = 8
    with use_sink(clock):
        r = finetune(a.model, a.data, method=a.method, config=cfg, options={"save_every": 0}, store=store, force=True)
    curves = json.loads((r.artifact.path / "training" / "curves.json").read_text())
    tokens = [row["tokens"] for row in curves["train"]]
    padded = _padded_tokens(r.artifact, store, a)
    m = r.artifact.manifest.metrics
    return {"tokens_per_s": steady(clock.times, tokens), "tokens_per_cpu_s": steady(clock.cpu, tokens),
            "padded_tokens_per_cpu_s": steady(clock.cpu, padded), "peak_rss_mb": _peak_mb(),
            "train_rss_mb": max(clock.rss), "trainable_params": m["trainable_params"], "total_params": m["total_params"], "trainable_pct": m["trainable_pct"],
            "steps": len(tokens), "tokens": tokens[-1]}


def _padded_tokens(artifact: Any, store: Any, a: argparse.Namespace) -> list[int]:
    """Cumulative padded tokens (rows x longest row) per step, replaying the loop's seeded batches."""
    from slmops.finetune.config import make_config
    from slmops.finetune.data import build_data, epoch_batches
    from slmops.models.loading import load_tokenizer
    from slmops.stage.inputs import resolve_input

    cfg = make_config(a.method, artifact.manifest.stage.config)
    data = build_data(load_tokenizer(resolve_input(a.model, store, kind="model")), resolve_input(a.data, store, kind="dataset"), cfg,
                      max_length=512)
    out, total, epoch = [], 0, 0
    while len(out) < a.steps:
        for batch in epoch_batches(len(data.train), a.batch, seed=cfg.seed, epoch=epoch):
            total += len(batch) * max(len(data.train[i]) for i in batch)
            out.append(total)
            if len(out) == a.steps:
                break
        epoch += 1
    return out


def worker_trainer(a: argparse.Namespace) -> dict[str, Any]:
    """The same LoRA as ``finetune.lora``, trained by a plain PEFT + transformers Trainer loop."""
    import peft
    import transformers as tf

    from slmops.data.examples import build_examples
    from slmops.data.io import read_dataset
    from slmops.finetune.methods import DEFAULT_TARGETS
    from slmops.models.loading import load_model_and_tokenizer
    from slmops.stage.inputs import resolve_input
    from slmops.store import Store

    store = Store()
    base = resolve_input(a.model, store, kind="model")
    data = resolve_input(a.data, store, kind="dataset")
    model, tok = load_model_and_tokenizer(base)
    model.train()
    model.config.use_cache = False
    model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=DEFAULT_TARGETS["llama"],
                                                       task_type="CAUSAL_LM"))
    examples = build_examples(tok, read_dataset(data, "train"), max_length=512).examples
    rows = [{"input_ids": e.input_ids, "labels": e.labels, "attention_mask": e.attention_mask} for e in examples]
    pad = tf.DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100, return_tensors="pt")
    seen: list[int] = []
    padded_seen: list[int] = []

    def collate(batch: list[dict[str, Any]]) -> Any:
        out = pad(batch)
        seen.append(int(out["attention_mask"].sum()))
        padded_seen.append(int(out["input_ids"].numel()))
        return out

    clock = StepClock()

    class Clock(tf.TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            clock.tick()

    with tempfile.TemporaryDirectory() as tmp:
        args = tf.TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=a.batch, max_steps=a.steps, learning_rate=LR["lora"], lr_scheduler_type="cosine",
            weight_decay=0.0, max_grad_norm=1.0, logging_strategy="no", save_strategy="no", eval_strategy="no", report_to=[],
            use_cpu=True, dataloader_num_workers=0, remove_unused_columns=False, seed=0, disable_tqdm=True,
        )
        trainer = tf.Trainer(model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[Clock()])
        trainer.train()
    tokens = [sum(seen[: i + 1]) for i in range(len(clock.times))]
    padded = [sum(padded_seen[: i + 1]) for i in range(len(clock.times))]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"tokens_per_s": steady(clock.times, tokens), "tokens_per_cpu_s": steady(clock.cpu, tokens),
            "padded_tokens_per_cpu_s": steady(clock.cpu, padded), "peak_rss_mb": _peak_mb(), "train_rss_mb": max(clock.rss),
            "trainable_params": trainable,
            "total_params": total, "trainable_pct": round(100 * trainable / total, 4), "steps": len(clock.times), "tokens": tokens[-1]}


def run_worker(home: Path, method: str, model: str, data: str, steps: int, batch: int, threads: int) -> dict[str, Any]:
    env = {**os.environ, "SLMOPS_HOME": str(home), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "worker", "--method", method, "--model", model, "--data", data, "--steps", str(steps), "--batch", str(batch)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median_table(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out = {}
    for method, rs in runs.items():
        keys = ("tokens_per_s", "tokens_per_cpu_s", "padded_tokens_per_cpu_s", "peak_rss_mb", "train_rss_mb")
        out[method] = {k: statistics.median(r[k] for r in rs) for k in keys}
        out[method].update({k: rs[0][k] for k in ("trainable_params", "total_params", "trainable_pct", "steps")}, repeats=len(rs),
                           tokens_per_cpu_s_all=[round(r["tokens_per_cpu_s"], 1) for r in rs])
    return out


def print_table(title: str, table: dict[str, dict[str, Any]]) -> None:
    print(f"\n{title}")
    print(f"{'method':<14}{'tok/CPU-s':>10}{'padded':>8}{'tok/s wall':>11}{'peak RSS MiB':>14}{'train RSS MiB':>15}{'trainable':>12}"
          f"{'trainable %':>13}")
    for m, r in table.items():
        print(f"{m:<14}{r['tokens_per_cpu_s']:>10.0f}{r['padded_tokens_per_cpu_s']:>8.0f}{r['tokens_per_s']:>11.0f}{r['peak_rss_mb']:>14.0f}"
              f"{r['train_rss_mb']:>15.0f}{r['trainable_params']:>12}{r['trainable_pct']:>13.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", default="bench", choices=["bench", "worker"])
    ap.add_argument("--home", type=Path, default=None, help="Store to use (default: a fresh temp dir)")
    ap.add_argument("--n", type=int, default=600, help="Records of the built-in task")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (1 keeps the comparison stable when the cores are shared)")
    ap.add_argument("--methods", default=",".join(METHODS), help="Comma-separated subset of " + ", ".join(METHODS))
    ap.add_argument("--big", action="store_true", help="Also compare LoRA and QLoRA memory on a ~190M-parameter model")
    ap.add_argument("--big-steps", type=int, default=3)
    ap.add_argument("--big-batch", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("finetune_methods.json"))
    ap.add_argument("--method")
    ap.add_argument("--model")
    ap.add_argument("--data")
    a = ap.parse_args()
    if a.mode == "worker":
        res = worker_trainer(a) if a.method == "trainer-lora" else worker_slmops(a)
        print(json.dumps(res))
        return

    home = a.home or Path(tempfile.mkdtemp(prefix="slmops-ft-bench-"))
    os.environ["SLMOPS_HOME"] = str(home)
    from slmops.stage.runner import run_stage
    from slmops.store import Store

    store = Store()
    data = run_stage("data.synth", {}, {"task": "support-intent", "n": a.n}, store=store, output_name="bench-data").artifact
    small = run_stage("models.init", {"data": data}, {"arch": "llama", "size": "small", "intermediate_size": 1024}, store=store,
                      output_name="bench-small").artifact
    print(f"small model: {small.manifest.metrics['parameters']:,} parameters; store {home}", flush=True)
    methods = tuple(m for m in a.methods.split(",") if m)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for rep in range(a.repeats):
        order = methods[rep % len(methods):] + methods[: rep % len(methods)]
        for method in order:
            r = run_worker(home, method, "bench-small", "bench-data", a.steps, a.batch, a.threads)
            runs[method].append(r)
            print(f"  repeat {rep + 1} {method:<13} {r['tokens_per_cpu_s']:8.0f} tok/CPU-s {r['tokens_per_s']:8.0f} tok/s  "
                  f"peak {r['peak_rss_mb']:6.0f} MiB", flush=True)
    small_table = median_table(runs)
    print_table(f"small llama ({small.manifest.metrics['parameters']:,} params), {a.steps} steps x batch {a.batch}, "
                f"{a.threads} threads, medians of {a.repeats}", small_table)
    lo, tr = small_table.get("lora"), small_table.get("trainer-lora")
    result: dict[str, Any] = {"small": {"parameters": small.manifest.metrics["parameters"], "steps": a.steps, "batch": a.batch,
                                        "threads": a.threads, "repeats": a.repeats, "table": small_table, "runs": runs}}
    if lo and tr:
        ratio = lo["padded_tokens_per_cpu_s"] / tr["padded_tokens_per_cpu_s"]
        real = lo["tokens_per_cpu_s"] / tr["tokens_per_cpu_s"]
        wall = lo["tokens_per_s"] / tr["tokens_per_s"]
        print(f"\nLoRA (slmops) / LoRA (PEFT + Trainer): {ratio:.2f}x padded tokens per CPU-second "
              f"({real:.2f}x real tokens per CPU-second, {wall:.2f}x wall-clock)")
        result["small"].update(lora_over_trainer_padded_tokens_per_cpu_s=ratio, lora_over_trainer_tokens_per_cpu_s=real,
                               lora_over_trainer_tokens_per_s_wall=wall)
    if a.big:
        big = run_stage("models.init", {"data": data}, {"arch": "llama", "size": "small", "hidden_size": 1024, "num_layers": 16,
                                                         "intermediate_size": 2816, "num_heads": 16}, store=store, output_name="bench-big").artifact
        print(f"\nbig model: {big.manifest.metrics['parameters']:,} parameters", flush=True)
        big_runs: dict[str, list[dict[str, Any]]] = {"lora": [], "qlora": []}
        for rep in range(max(1, a.repeats - 1)):
            for method in (("lora", "qlora") if rep % 2 == 0 else ("qlora", "lora")):
                r = run_worker(home, method, "bench-big", "bench-data", a.big_steps, a.big_batch, a.threads)
                big_runs[method].append(r)
                print(f"  repeat {rep + 1} {method:<6} peak {r['peak_rss_mb']:6.0f} MiB, training {r['train_rss_mb']:6.0f} MiB", flush=True)
        big_table = median_table(big_runs)
        print_table(f"big llama ({big.manifest.metrics['parameters']:,} params), {a.big_steps} steps x batch {a.big_batch}", big_table)
        rss_ratio = big_table["qlora"]["peak_rss_mb"] / big_table["lora"]["peak_rss_mb"]
        print(f"\nQLoRA / LoRA peak RSS: {rss_ratio:.2f}; during training: "
              f"{big_table['qlora']['train_rss_mb'] / big_table['lora']['train_rss_mb']:.2f}")
        result["big"] = {"parameters": big.manifest.metrics["parameters"], "table": big_table, "runs": big_runs,
                         "qlora_over_lora_peak_rss": rss_ratio}
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
