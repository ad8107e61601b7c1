"""What batching would give on ONNX Runtime GenAI: our serial runtime against onnxruntime-genai's own ``Engine``.

The server runs ONNX exports one request at a time: the runtime drives ``og.Generator`` (a fixed
batch, one sequence per generator), and sampling, stop strings and logprobs are slmops' own.
onnxruntime-genai 0.18 also ships an ``Engine`` that schedules ``Request``s itself (continuous
batching up to ``configured_max_batch_size``). This script measures, on one ONNX export, greedy,
``--tokens`` new tokens per request:

* ``serial``: N requests one after another through :class:`~slmops.runtimes.ortgenai_rt.OrtGenAIRuntime`;
* ``engine c=1``: N requests one after another through ``og.Engine``;
* ``engine c=N``: the N requests begun together, the engine batching them.

Without ``--model`` a random Llama (hidden 256, 6 layers, context 1024) is built and exported to
fp32 ONNX in a temporary store. Run:

    .venv/bin/python benchmarks/ortgenai_batching.py --requests 4 --tokens 64 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def build_model(home: Path) -> Path:
    os.environ["SLMOPS_HOME"] = str(home)
    from slmops.stage.runner import run_stage
    from slmops.store import Store

    with Store(home) as store:
        hf = run_stage("models.init", {}, {"arch": "llama", "size": "small", "seed": 0}, store=store).artifact
        onnx = run_stage("export.onnx", {"model": hf}, {"precision": "fp32", "parity_texts": 0}, store=store).artifact
    return onnx.path


def engine_run(model: Any, prompts: list[list[int]], tokens: int, together: bool) -> float:
    """Seconds to generate ``tokens`` for each prompt through og.Engine (all begun at once, or one by one)."""
    import numpy as np
    import onnxruntime_genai as og

    engine = og.Engine(model)
    buf = engine.create_event_buffer(256)
    t0 = time.perf_counter()
    groups = [prompts] if together else [[p] for p in prompts]
    made = 0
    for group in groups:
        reqs = []
        for p in group:
            r = engine.create_request()
            opts = og.TurnOptions(r)
            opts.set_max_generated_tokens(tokens)
            opts.set_min_generated_tokens(tokens)
            opts.set_temperature(0.0)
            r.begin_turn(np.asarray(p, dtype=np.int32), opts)
            reqs.append(r)
        while engine.has_pending_requests():
            out = engine.run(buf)
            made += len(out)
        for r in reqs:
            r.close()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="an export.onnx folder (default: build a random small Llama)")
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import onnxruntime_genai as og

    from slmops.runtimes import GenerationParams, open_runtime

    with tempfile.TemporaryDirectory(prefix="slmops-ortb-") as tmp:
        path = args.model or build_model(Path(tmp))
        rt = open_runtime(path)
        prompts = [rt.encode_prompt(f"request {i}: the quick brown fox jumps over the lazy dog and") for i in range(args.requests)]
        model = og.Model(str(path))
        cap = og.Engine(model).get_capabilities()
        params = GenerationParams(max_tokens=args.tokens, ignore_eos=True)
        times: dict[str, list[float]] = {"serial": [], "engine c=1": [], f"engine c={args.requests}": []}
        for r in range(args.rounds):
            for name in (list(times) if r % 2 == 0 else list(reversed(times))):
                if name == "serial":
                    t0 = time.perf_counter()
                    for p in prompts:
                        rt.generate(p, params)
                    times[name].append(time.perf_counter() - t0)
                else:
                    times[name].append(engine_run(model, prompts, args.tokens, together=not name.endswith("c=1")))
        rt.close()
    total = args.requests * args.tokens
    rows = {k: total / statistics.median(v) for k, v in times.items()}
    print(f"ONNX Runtime GenAI {og.__version__}, Engine configured_max_batch_size {cap.configured_max_batch_size}; "
          f"{args.requests} requests x {args.tokens} tokens, medians of {args.rounds} alternating rounds (shared machine)\n")
    print("| path | total tok/s | vs serial |\n|---|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v:.1f} | {v / rows['serial']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"tok_s": rows, "seconds": times, "max_batch": cap.configured_max_batch_size}, indent=1))


if __name__ == "__main__":
    main()
