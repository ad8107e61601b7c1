"""SmolLM2-135M-Instruct teacher vs its pruned, healed and distilled student, against the issue-13 goals.

Runs ``examples/smollm2.yaml`` through the cached runner (a finished run is all cache hits), then two
control arms at the student's exact training budget (the recipe's own step configs):

* ``sft``    — the healed student trained on the teacher's answers with cross-entropy only (no logits);
* ``random`` — a randomly initialised model of the student's shape and tokenizer, healed and
  distilled exactly like the pruned one.

Every arm is scored by the recipe's ``eval`` config on the held-out test phrasings. Writes
``benchmarks/smollm2_student.json`` and ``.md``.

    SLMOPS_HOME=/tmp/smol python benchmarks/smollm2_student.py            # recipe + arms
    python benchmarks/smollm2_student.py --skip-arms --set teacher_steps=24  # recipe only, vars overridden
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "smollm2.yaml"


def _random_like(shrunk: Any, store: Any, seed: int) -> Any:
    """A model of the shrunk student's config and tokenizer with fresh random weights (models.import of a folder)."""
    import torch
    import transformers as tf

    from slmops.stage.runner import run_stage

    config = tf.AutoConfig.from_pretrained(str(shrunk.path))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "random-student"
        shutil.copytree(shrunk.path, folder, ignore=shutil.ignore_patterns("manifest.json", "*.safetensors", "shrink.json"))
        model.save_pretrained(str(folder))
        return run_stage("models.import", {}, {"path": str(folder), "source": f"random init (seed {seed}) of sha256:{shrunk.short}"}, store=store).artifact


def _recipe_results(steps: dict[str, Any], shrunk: Any, teacher: Any, recipe_s: float) -> dict[str, Any]:
    """The recipe's own numbers: accuracies, parameters, shrink facts, retention report, GGUF size."""

    def acc(step: str) -> float:
        return float(steps[step].metrics["accuracy"])

    ret = steps["retention"].metrics
    gguf_bytes = int(steps["student_gguf"].artifact.manifest.metrics.get("size_bytes") or sum(p.stat().st_size for p in steps["student_gguf"].artifact.path.glob("*.gguf")))
    teacher_bytes = sum(p.stat().st_size for p in teacher.path.glob("*.safetensors"))
    out: dict[str, Any] = {
        "recipe_seconds": round(recipe_s, 1),
        "step_seconds": {s: round(r.seconds, 1) for s, r in steps.items()},
        "steps_ran": [s for s, r in steps.items() if r.status == "ran"],
        "accuracy": {"base": acc("eval_base"), "teacher": acc("eval_teacher"), "student": acc("eval_student"),
                     "student_gguf_q4_k_m": acc("eval_gguf"), "student_onnx_int4": acc("eval_onnx")},
        "parameters": {"teacher": shrunk.manifest.metrics["parameters_teacher"], "student": shrunk.manifest.metrics["parameters"],
                       "ratio": shrunk.manifest.metrics["parameter_ratio"]},
        "shrink": {k: shrunk.manifest.meta[k] for k in ("removed_layers", "student_dims", "block_influence")}
        | {k: shrunk.manifest.metrics.get(k) for k in ("perplexity_teacher", "perplexity_before_healing")},
        "retention_report": {k: ret.get(k) for k in ("accuracy_retention_pct", "latency_reduction_pct", "memory_reduction_pct",
                                                      "process_memory_reduction_pct", "size_reduction_pct", "parameter_ratio",
                                                      "teacher_accuracy", "student_accuracy")},
        "gguf_q4_k_m_bytes": gguf_bytes,
        "teacher_fp32_bytes": teacher_bytes,
        "gguf_vs_teacher_fp32_reduction_pct": round(100 * (1 - gguf_bytes / teacher_bytes), 2),
    }
    out["accuracy_retention_pct"] = round(100 * out["accuracy"]["student"] / out["accuracy"]["teacher"], 2) if out["accuracy"]["teacher"] else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", default=[], metavar="VAR=VALUE", help="override a recipe var (YAML-typed)")
    ap.add_argument("--skip-arms", action="store_true", help="only the recipe (no SFT-only / random-init arms)")
    ap.add_argument("--arms", default="sft,random", help="comma-separated arms: sft, random")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "smollm2_student"), help="output path without suffix")
    ap.add_argument("--arms-only", action="store_true", help="run the recipe only up to the student (cached) and then the arms")
    args = ap.parse_args()

    from slmops.pipeline.execute import run_recipe
    from slmops.pipeline.recipe import load_recipe, substitute_vars
    from slmops.stage.runner import run_stage
    from slmops.store.registry import Store

    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    recipe = load_recipe(RECIPE, overrides=overrides)
    t0 = time.perf_counter()
    with Store() as store:
        steps = {r.step: r for r in run_recipe(recipe, store=store, until="student" if args.arms_only else None)}
        recipe_s = time.perf_counter() - t0

        def cfg(step: str) -> dict[str, Any]:
            return substitute_vars(recipe.steps[step].config, recipe.vars, step)

        def evaluate(model: Any) -> float:
            return float(run_stage("eval", {"model": model, "data": steps["data"].artifact}, cfg("eval_student"), store=store).artifact.manifest.metrics["accuracy"])

        def to_teacher(model: Any) -> dict[str, float]:
            """How close an arm's next-token distributions are to the teacher's on the test chats (what logit KD trains)."""
            m = run_stage("parity", {"candidate": model, "reference": steps["teacher"].artifact, "data": steps["data"].artifact},
                          {"split": "test", "max_texts": 32, "greedy_prompts": 0, "max_kl": None, "min_top1": None,
                           "min_greedy_match": None, "max_task_drop": None}, store=store).artifact.manifest.metrics
            return {"kl_to_teacher": float(m["kl_mean"]), "top1_vs_teacher": float(m["top1_agreement"])}

        teacher, shrunk = steps["teacher"].artifact, steps["shrunk"].artifact
        out: dict[str, Any] = {"recipe_vars": recipe.vars}
        if not args.arms_only:
            out.update(_recipe_results(steps, shrunk, teacher, recipe_s))
        arms = [] if args.skip_arms else [a.strip() for a in args.arms.split(",") if a.strip()]
        arm_acc: dict[str, Any] = {"logit_kd (recipe)": evaluate(steps["student"].artifact)} if arms else {}
        arm_fid: dict[str, Any] = {"logit_kd (recipe)": to_teacher(steps["student"].artifact)} if arms else {}
        out.setdefault("step_seconds", {})
        for arm in arms:
            t = time.perf_counter()
            if arm == "sft":
                c = {**cfg("student"), "mode": "sft"}
                for k in ("alpha", "temperature"):
                    c.pop(k, None)
                model = run_stage("distill.train", {"student": steps["healed"].artifact, "data": steps["labels"].artifact}, c, store=store).artifact
            elif arm == "random":
                rnd = _random_like(shrunk, store, seed=0)
                healed = run_stage("distill.train", {"student": rnd, "teacher": teacher, "data": steps["prose"].artifact}, cfg("healed"), store=store).artifact
                model = run_stage("distill.train", {"student": healed, "teacher": teacher, "data": steps["labels"].artifact}, cfg("student"), store=store).artifact
            else:
                raise SystemExit(f"unknown arm {arm!r}")
            arm_acc[arm] = evaluate(model)
            arm_fid[arm] = to_teacher(model)
            out["step_seconds"][f"arm_{arm}"] = round(time.perf_counter() - t, 1)
        out["arms_accuracy"] = arm_acc
        out["arms_to_teacher"] = arm_fid
    suffix = "_arms" if args.arms_only else ""
    Path(args.out + suffix + ".json").write_text(json.dumps(out, indent=1) + "\n")
    text = render(out) if not args.arms_only else render_arms(out)
    Path(args.out + suffix + ".md").write_text(text + "\n")
    print(text)


def render(r: dict[str, Any]) -> str:
    a, p, rr = r["accuracy"], r["parameters"], r["retention_report"]
    lines = [
        "| model | params | test accuracy (held-out phrasings) |",
        "|---|---:|---:|",
        f"| SmolLM2-135M-Instruct as imported (zero-shot) | {p['teacher']:,} | {a['base']:.3f} |",
        f"| teacher = base + LoRA (merged) | {p['teacher']:,} | {a['teacher']:.3f} |",
        f"| student (pruned, healed, logit KD) | {p['student']:,} ({p['ratio']:.2f}x) | {a['student']:.3f} |",
        f"| student GGUF Q4_K_M | | {a['student_gguf_q4_k_m']:.3f} |",
        f"| student ONNX int4 | | {a['student_onnx_int4']:.3f} |",
        "",
        f"- accuracy retention (eval, {r['recipe_vars'].get('eval_limit', '?')} test records): {r['accuracy_retention_pct']}%; retention report: {rr['accuracy_retention_pct']}%",
        f"- latency reduction (retention report, fp32 vs fp32, 1 thread): {rr['latency_reduction_pct']}%",
        f"- model memory reduction (peak RSS minus pre-load RSS, fp32 vs fp32): {rr['memory_reduction_pct']}%",
        f"- student GGUF Q4_K_M {r['gguf_q4_k_m_bytes'] / 1e6:.1f} MB vs teacher fp32 weights {r['teacher_fp32_bytes'] / 1e6:.1f} MB: "
        f"{r['gguf_vs_teacher_fp32_reduction_pct']}% smaller",
        f"- shrink: removed layers {r['shrink']['removed_layers']}; perplexity on held-out prose {r['shrink']['perplexity_teacher']} (teacher) -> "
        f"{r['shrink']['perplexity_before_healing']} (student before healing)",
    ]
    return "\n".join(lines) + ("\n\n" + render_arms(r) if r.get("arms_accuracy") else "")


def render_arms(r: dict[str, Any]) -> str:
    fid = r.get("arms_to_teacher", {})
    lines = ["| arm (same training budget) | test accuracy | KL to the teacher (nats) | top-1 agreement with the teacher |", "|---|---:|---:|---:|"]
    for k, v in r.get("arms_accuracy", {}).items():
        f = fid.get(k) or {}
        kl = f"{f['kl_to_teacher']:.3f}" if "kl_to_teacher" in f else "-"
        top1 = f"{f['top1_vs_teacher']:.3f}" if "top1_vs_teacher" in f else "-"
        lines.append(f"| {k} | {v:.3f} | {kl} | {top1} |" if v is not None else f"| {k} | (not run) | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
