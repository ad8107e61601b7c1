"""Benchmark: how much of a trained teacher a ≥8× smaller student keeps, SFT-only vs logit KD, on the built-in task.

Everything runs through the same stages the CLI uses, in a fresh store:

1. ``data.synth support-intent`` (train/validation/test; the test split uses held-out phrasings), and
   the same prompts without answers.
2. Teacher: ``models.init --size small`` (llama, tokenizer trained on the task data), then
   ``finetune.full`` on the task.
3. ``distill.generate``: the teacher answers the train/validation prompts (a local teacher, batched).
4. Student: ``models.init`` at a fraction of the size, same tokenizer; ``distill.train`` twice with
   the same budget (steps, learning rate, seed): ``--mode sft`` and ``--mode logits``.
5. ``distill.report`` teacher vs each student on the test split (each model measured alone in its
   own process, one torch thread each).

Run (about 8½ minutes of CPU; 20 minutes of wall time on a busy 2-core machine, most of it the teacher's fine-tune)::

    .venv/bin/python benchmarks/distill_retention.py [--out benchmarks/distill_results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=None, help="Store to use (default: a fresh temp dir)")
    ap.add_argument("--n", type=int, default=600, help="Records of the built-in task (all splits)")
    ap.add_argument("--teacher-epochs", type=int, default=3)
    ap.add_argument("--student-epochs", type=int, default=8)
    ap.add_argument("--kd-mode", default="topk", help="topk (stored top-k from generation) or logits (teacher run on every batch)")
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--student-hidden", type=int, default=64)
    ap.add_argument("--student-layers", type=int, default=2)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--loss", default="forward_kl")
    ap.add_argument("--limit", type=int, default=150, help="Test records per measurement")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("distill_results.json"))
    a = ap.parse_args()
    os.environ["SLMOPS_HOME"] = str(a.home or tempfile.mkdtemp(prefix="slmops-distill-bench-"))

    from slmops.stage.runner import run_stage
    from slmops.store import Store

    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    store = Store()

    def step(label: str, *args: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        r = run_stage(*args, store=store, **kw)
        timings[label] = round(time.perf_counter() - t, 1)
        print(f"[{timings[label]:7.1f}s] {label}: sha256:{r.artifact.short}", flush=True)
        return r.artifact

    data = step("data", "data.synth", {}, {"task": "support-intent", "n": a.n, "seed": 0})
    prompts = step("prompts", "data.synth", {}, {"task": "support-intent", "n": a.n, "seed": 0, "prompts_only": True})
    base = step("teacher init", "models.init", {"data": data}, {"arch": "llama", "size": "small", "vocab_size": 1000, "seed": 0})
    teacher = step(
        "teacher finetune",
        "finetune.full",
        {"model": base, "data": data},
        {"epochs": a.teacher_epochs, "learning_rate": 1e-3, "batch_size": 16, "max_length": 128, "warmup_ratio": 0.05, "seed": 0},
    )
    gen = step(
        "distill.generate",
        "distill.generate",
        {"prompts": prompts, "teacher": teacher},
        {
            "task": "classification",
            "splits": ["train", "validation"],
            "max_tokens": 8,
            "batch_size": 32,
            "top_logprobs": a.top_k if a.kd_mode == "topk" else 0,
        },
    )
    s0 = step(
        "student init",
        "models.init",
        {"data": data},
        {
            "arch": "llama",
            "size": "tiny",
            "hidden_size": a.student_hidden,
            "num_layers": a.student_layers,
            "num_heads": 4,
            "intermediate_size": a.student_hidden * 2,
            "vocab_size": 1000,
            "seed": 1,
        },
    )
    budget = {"epochs": a.student_epochs, "learning_rate": 3e-3, "batch_size": 16, "max_length": 128, "warmup_ratio": 0.05, "seed": 0}
    sft = step("student SFT-only", "distill.train", {"student": s0, "data": gen}, {"mode": "sft", "train": budget})
    kd_inputs = {"student": s0, "data": gen, **({"teacher": teacher} if a.kd_mode == "logits" else {})}
    kd = step(
        "student logit KD",
        "distill.train",
        kd_inputs,
        {"mode": a.kd_mode, "loss": a.loss, "alpha": a.alpha, "temperature": a.temperature, "train": budget},
    )
    keys = (
        "parameters",
        "weights_bytes",
        "model_rss_bytes",
        "peak_rss_bytes",
        "mean_latency_s",
        "p50_latency_s",
        "throughput_tok_s",
        "accuracy",
    )
    reports: dict[str, Any] = {}
    for split in ("test", "validation"):  # test: held-out phrasings; validation: seen phrasings, unseen records (no model trained on it)
        rcfg = {"split": split, "limit": a.limit, "max_tokens": 8, "threads": 1}
        for who, student in (("kd", kd), ("sft", sft)):
            rep = step(f"report {who} {split}", "distill.report", {"teacher": teacher, "student": student, "data": data}, rcfg)
            doc = json.loads((rep.path / "report.json").read_text())
            reports[f"{split}_{who}"] = {
                "report": rep.digest,
                "teacher": {k: doc["teacher"][k] for k in keys},
                "student": {k: doc["student"][k] for k in keys},
                "retention": doc["retention"],
            }
    result = {
        "reports": reports,
        "teacher_train": {k: teacher.manifest.metrics.get(k) for k in ("steps", "train_loss", "val_loss", "train_seconds")},
        "student_train": {
            n: {k: x.manifest.metrics.get(k) for k in ("steps", "train_loss", "val_loss", "train_seconds")}
            for n, x in (("sft", sft), ("kd", kd))
        },
        "generate": {k: gen.manifest.metrics.get(k) for k in ("requests", "kept", "dropped", "dropped_not_a_label", "dropped_duplicate")},
        "settings": vars(a) | {"out": str(a.out), "home": os.environ["SLMOPS_HOME"]},
        "timings_s": timings,
        "total_s": round(time.perf_counter() - t_all, 1),
    }
    a.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: result[k] for k in ("reports", "generate", "total_s")}, indent=2))


if __name__ == "__main__":
    main()
