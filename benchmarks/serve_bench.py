"""Serving benchmark: slmops serve vs llama-cpp-python's own OpenAI server on the same GGUF, plus torch batching.

What it measures, side by side in one run (streamed ``/v1/completions``, same prompt, greedy, a fixed
number of new tokens per request — ``ignore_eos`` on ours, ``min_tokens`` on the peer):

* the raw engine (our llama.cpp runtime in-process, no HTTP): decode tokens/s at concurrency 1;
* each server at concurrency 1, 4 and 8: TTFT, per-stream decode tokens/s and total throughput, p50/p95;
* idle RSS of each server with the model loaded, minus a bare process that only loads the model;
* our server on the torch runtime (continuous batching) at concurrency 1, 4 and 8.

Everything runs on 127.0.0.1 with bounded request counts. The model is a random-weight Llama built
in code (no download), exported to GGUF Q8_0 by ``export.gguf``. Results go to stdout as Markdown
and to ``--json``. Run:

    .venv/bin/python benchmarks/serve_bench.py --out benchmarks/serve.md --json benchmarks/serve.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPT = "The small model answered the customer's question about the delivery of the parcel and then"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


# ----------------------------------------------------------------------------------- models


def build_models(home: Path, args: argparse.Namespace) -> dict[str, Any]:
    os.environ["SLMOPS_HOME"] = str(home)
    from slmops.stage.runner import run_stage
    from slmops.store import Store

    with Store(home) as store:
        dims = {"arch": "llama", "size": "small", "hidden_size": args.hidden, "num_layers": args.layers, "num_heads": args.heads,
                "intermediate_size": args.intermediate, "context_length": 2048, "vocab_size": 8000, "seed": 0}
        hf = run_stage("models.init", {}, dims, store=store, output_name="bench-hf").artifact
        gguf = run_stage("export.gguf", {"model": hf}, {"qtype": args.qtype}, store=store, output_name="bench-gguf").artifact
        return {"hf": hf, "gguf": gguf, "gguf_file": gguf.path / "model.gguf", "params": hf.manifest.meta.get("parameters")}


def raw_engine(gguf_path: Path, tokens: int, repeats: int = 3) -> dict[str, Any]:
    from slmops.runtimes import GenerationParams, open_runtime

    rt = open_runtime(gguf_path)
    try:
        p = GenerationParams(max_tokens=tokens, ignore_eos=True)
        rt.generate(PROMPT, GenerationParams(max_tokens=8))
        speeds, ttfts = [], []
        for _ in range(repeats):
            r = rt.generate(PROMPT, p)
            speeds.append((r.completion_tokens - 1) / (r.total_s - r.ttft_s))
            ttfts.append(r.ttft_s)
        return {"decode_tok_s": statistics.median(speeds), "ttft_s": statistics.median(ttfts), "threads": rt.info.extra.get("threads")}
    finally:
        rt.close()


# ----------------------------------------------------------------------------------- servers


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, get SIGTERM when the benchmark dies (a ``timeout`` or a kill leaves no server behind)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Proc:
    """A server under test, in a session of its own; stopped by :meth:`stop`, or by the kernel when the benchmark dies."""

    def __init__(self, cmd: list[str], url: str, env: dict[str, str], log: Path) -> None:
        self.url = url
        self.log = open(log, "w")  # noqa: SIM115
        self.p = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                  preexec_fn=_die_with_parent)  # noqa: PLW1509 - no threads run yet in these scripts

    def wait_ready(self, path: str, timeout: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError(f"server exited with {self.p.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server at {self.url} not ready after {timeout}s")

    def rss_mb(self) -> float:
        import psutil

        p = psutil.Process(self.p.pid)
        return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 2**20

    def stop(self) -> None:
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGINT)
            try:
                self.p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        self.log.close()


def bare_rss_mb(gguf_path: Path) -> float:
    code = ("import psutil, sys\nfrom slmops.runtimes import open_runtime\nrt = open_runtime(sys.argv[1])\n"
            "rt.generate('hello', __import__('slmops.runtimes', fromlist=['GenerationParams']).GenerationParams(max_tokens=4))\n"
            "print(psutil.Process().memory_info().rss / 2**20)")
    out = subprocess.run([sys.executable, "-c", code, str(gguf_path)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def start_ours(home: Path, model: str, runtime: str, parallel: int, workdir: Path, *extra: str) -> Proc:
    port = free_port()
    env = {**os.environ, "SLMOPS_HOME": str(home)}
    cmd = [sys.executable, "-m", "slmops", "serve", model, "--port", str(port), "--no-request-log", "--runtime", runtime,
           "--parallel", str(parallel), "--max-queue", "64", "--ttl", "0", *extra]
    proc = Proc(cmd, f"http://127.0.0.1:{port}", env, workdir / f"ours-{runtime}.log")
    proc.wait_ready("/health")
    import httpx

    httpx.get(f"{proc.url}/openai/load/{model}", timeout=120).raise_for_status()
    return proc


def start_peer(gguf_path: Path, threads: int, workdir: Path) -> Proc:
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path), "--model_alias", "peer", "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "2048", "--n_threads", str(threads), "--n_threads_batch", str(threads), "--verbose", "False",
           "--interrupt_requests", "False"]  # its default cuts a running stream off when a new request comes in
    proc = Proc(cmd, f"http://127.0.0.1:{port}", dict(os.environ), workdir / "peer.log")
    proc.wait_ready("/v1/models")
    return proc


# ----------------------------------------------------------------------------------- load


async def one_request(client: Any, url: str, body: dict[str, Any]) -> dict[str, float]:
    t0 = time.perf_counter()
    first = last = None
    n = 0
    async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                now = time.perf_counter()
                first = first or now
                last = now
                n += 1
    assert first is not None and last is not None
    return {"ttft": first - t0, "tokens": n, "decode_tok_s": (n - 1) / (last - first) if n > 1 and last > first else float("nan"),
            "total": time.perf_counter() - t0}


async def run_level(url: str, body: dict[str, Any], concurrency: int, n_requests: int) -> dict[str, Any]:
    import httpx

    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency + 2)) as client:

        async def task() -> dict[str, float]:
            async with sem:
                return await one_request(client, url, body)

        await one_request(client, url, {**body, "max_tokens": 4, **({"min_tokens": 4} if "min_tokens" in body else {})})  # warm-up
        t0 = time.perf_counter()
        results = await asyncio.gather(*[task() for _ in range(n_requests)])
        wall = time.perf_counter() - t0
    ttft = [r["ttft"] for r in results]
    dec = [r["decode_tok_s"] for r in results]
    tokens = sum(r["tokens"] for r in results)
    return {"concurrency": concurrency, "requests": n_requests, "tokens": tokens, "wall_s": wall, "throughput_tok_s": tokens / wall,
            "ttft_p50": pct(ttft, 0.5), "ttft_p95": pct(ttft, 0.95), "stream_tok_s_p50": pct(dec, 0.5), "stream_tok_s_p95": pct(dec, 0.95)}


def paired_vs_raw(url: str, body: dict[str, Any], gguf_path: Path, rounds: int) -> dict[str, float]:
    """Decode tok/s of the raw engine and of one streamed server request, alternated (robust to load drifting)."""
    from slmops.runtimes import GenerationParams, open_runtime

    rt = open_runtime(gguf_path)
    raw, served = [], []
    try:
        p = GenerationParams(max_tokens=body["max_tokens"], ignore_eos=True)
        for _ in range(rounds):
            r = rt.generate(PROMPT, p)
            raw.append((r.completion_tokens - 1) / (r.total_s - r.ttft_s))
            served.append(asyncio.run(_single(url, body))["decode_tok_s"])
    finally:
        rt.close()
    return {"raw_tok_s": statistics.median(raw), "served_tok_s": statistics.median(served), "ratio": statistics.median(served) / statistics.median(raw)}


async def _single(url: str, body: dict[str, Any]) -> dict[str, float]:
    import httpx

    async with httpx.AsyncClient(timeout=600) as client:
        return await one_request(client, url, body)


def bench_server(url: str, body: dict[str, Any], levels: list[int], per_level: int) -> list[dict[str, Any]]:
    return [asyncio.run(run_level(url, body, c, max(per_level, 2 * c))) for c in levels]


# ----------------------------------------------------------------------------------- report


def table(rows: list[dict[str, Any]]) -> str:
    head = "| server | conc. | requests | TTFT p50 / p95 (s) | per-stream tok/s p50 / p95 | total tok/s |\n|---|---|---|---|---|---|\n"
    return head + "".join(
        f"| {r['server']} | {r['concurrency']} | {r['requests']} | {r['ttft_p50']:.3f} / {r['ttft_p95']:.3f} | "
        f"{r['stream_tok_s_p50']:.1f} / {r['stream_tok_s_p95']:.1f} | {r['throughput_tok_s']:.1f} |\n"
        for r in rows
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=64, help="New tokens per request")
    ap.add_argument("--levels", default="1,4,8", help="Concurrency levels")
    ap.add_argument("--per-level", type=int, default=8, help="Requests per level (at least 2x the concurrency)")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--intermediate", type=int, default=1536)
    ap.add_argument("--qtype", default="q8_0")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--paired-rounds", type=int, default=8, help="Alternated raw/served requests for the concurrency-1 comparison")
    ap.add_argument("--torch-threads", type=int, default=1, help="--threads for the torch server")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--home", type=Path, default=None, help="Store to build the models in (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=None, help="Write the Markdown report here")
    ap.add_argument("--json", type=Path, default=None, help="Write raw results here")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    work = Path(tempfile.mkdtemp(prefix="slmops-serve-bench-"))
    home = args.home or work / "home"
    t_start = time.time()
    models = build_models(home, args)
    gguf_file, size_mb = models["gguf_file"], models["gguf_file"].stat().st_size / 2**20
    raw = raw_engine(gguf_file, args.tokens)
    threads = int(raw["threads"] or 1)
    ours_body = {"model": "bench-gguf", "prompt": PROMPT, "max_tokens": args.tokens, "temperature": 0, "stream": True, "ignore_eos": True}
    peer_body = {"model": "peer", "prompt": PROMPT, "max_tokens": args.tokens, "min_tokens": args.tokens, "temperature": 0, "stream": True}
    rows: list[dict[str, Any]] = []
    rss: dict[str, float] = {"bare_model_process_mb": bare_rss_mb(gguf_file)}

    ours = start_ours(home, "bench-gguf", "llamacpp", 1, work)
    try:
        time.sleep(1)
        rss["slmops_serve_idle_mb"] = ours.rss_mb()
        rows += [{"server": "slmops serve (llama.cpp)", **r} for r in bench_server(ours.url, ours_body, levels, args.per_level)]
        paired = paired_vs_raw(ours.url, ours_body, gguf_file, args.paired_rounds)
    finally:
        ours.stop()
    if not args.skip_peer:
        peer = start_peer(gguf_file, threads, work)
        try:
            time.sleep(1)
            rss["llama_cpp_server_idle_mb"] = peer.rss_mb()
            rows += [{"server": "llama_cpp.server", **r} for r in bench_server(peer.url, peer_body, levels, args.per_level)]
        finally:
            peer.stop()
    torch_rows: list[dict[str, Any]] = []
    if not args.skip_torch:
        t = start_ours(home, "bench-hf", "torch", max(levels), work, "--threads", str(args.torch_threads))
        try:
            body = {**ours_body, "model": "bench-hf"}
            torch_rows = [{"server": "slmops serve (torch, batched)", **r} for r in bench_server(t.url, body, levels, args.per_level)]
        finally:
            t.stop()

    by = {(r["server"], r["concurrency"]): r for r in rows + torch_rows}
    facts = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.1f}",
        "model": f"random Llama, {models['params'] / 1e6:.1f}M parameters, GGUF {args.qtype} {size_mb:.0f} MiB, {threads} llama.cpp thread(s)",
        "tokens_per_request": args.tokens,
        "raw_engine": raw,
        "rss": rss,
        "duration_s": round(time.time() - t_start, 1),
    }
    facts["paired_c1"] = paired
    goals = [(f"- Concurrency 1 vs the raw engine, measured alternately ({args.paired_rounds} rounds, medians): "
              f"{paired['served_tok_s']:.1f} vs {paired['raw_tok_s']:.1f} tok/s decode ({100 * paired['ratio']:.0f}%; goal ≥ 90%)")]
    if ("llama_cpp.server", 4) in by and ("slmops serve (llama.cpp)", 4) in by:
        a, b = by[("slmops serve (llama.cpp)", 4)], by[("llama_cpp.server", 4)]
        goals.append(f"- Concurrency 4 total throughput: slmops {a['throughput_tok_s']:.1f} vs llama_cpp.server {b['throughput_tok_s']:.1f} tok/s "
                     f"({100 * a['throughput_tok_s'] / b['throughput_tok_s']:.0f}%; goal ≥ 100%)")
    overhead = rss["slmops_serve_idle_mb"] - rss["bare_model_process_mb"]
    goals.append(f"- Idle RSS overhead of slmops serve beyond a process holding the model: {overhead:.0f} MiB (goal < 150 MiB); "
                 f"llama_cpp.server: {rss.get('llama_cpp_server_idle_mb', float('nan')) - rss['bare_model_process_mb']:.0f} MiB")
    if ("slmops serve (torch, batched)", 1) in by and ("slmops serve (torch, batched)", 4) in by:
        t1, t4 = by[("slmops serve (torch, batched)", 1)], by[("slmops serve (torch, batched)", 4)]
        goals.append(f"- Torch runtime, continuous batching: total throughput at concurrency 4 is {t4['throughput_tok_s'] / t1['throughput_tok_s']:.2f}x "
                     f"concurrency 1 ({t4['throughput_tok_s']:.1f} vs {t1['throughput_tok_s']:.1f} tok/s)")
    md = (f"# Serving benchmark\n\n{facts['machine']}; {facts['model']}; {args.tokens} new tokens per request, greedy, streamed "
          f"`/v1/completions`; raw engine decode {raw['decode_tok_s']:.1f} tok/s (TTFT {raw['ttft_s'] * 1000:.0f} ms). "
          f"Run took {facts['duration_s']} s.\n\n"
          "Command: `.venv/bin/python benchmarks/serve_bench.py --out benchmarks/serve.md --json benchmarks/serve.json`\n\n"
          + table(rows + torch_rows) + "\n" + "\n".join(goals) + "\n")
    print(md)
    if args.out:
        args.out.write_text(md)
    if args.json:
        args.json.write_text(json.dumps({"facts": facts, "rows": rows + torch_rows}, indent=2))


if __name__ == "__main__":
    main()
