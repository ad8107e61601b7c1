"""Beyond one machine: the Ray executor, sharded teacher generation and the S3 remote, measured on this machine.

Three measurements, each against a real local component started here (a 2-CPU Ray cluster on
127.0.0.1, moto's S3 server on 127.0.0.1, an OpenAI-compatible endpoint in its own process):

``branches``  a recipe with two independent, equally heavy branches (``data.synth`` → ``data.dedup`` of
              the same task with two seeds, one thread each) through the local executor and through ``--executor ray`` (shared-fs exchange,
              warm cluster), alternating, in fresh stores so nothing is cached: wall-time ratio ray/local.
``teacher``   ``distill.generate`` over an endpoint that answers every request after a fixed latency
              (asyncio, in its own process, so it is not the bottleneck) with 1 and with 2 Ray workers:
              answers/s end to end and in the steady state (after the first 10% of answers, i.e. without
              actor start-up), alternating.
``push``      a 100 MB model pushed to the S3 remote, pushed again unchanged (bytes uploaded), then
              pulled into an empty store (bytes verified by sha256).

    PYTHONPATH=src .venv/bin/python benchmarks/scale_bench.py --out benchmarks/scale.md

The machine's load average is recorded with every number: on a shared 2-core machine the parallel
speed-ups depend on what else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

BRANCH_N = 6000


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


# -- branches --------------------------------------------------------------------------------------
def branches_recipe(n: int) -> dict[str, Any]:
    return {"name": "two-branches", "executor": {"exchange": "shared-fs"}, "steps": {
        "a": {"stage": "data.synth", "config": {"task": "support-intent", "n": n}, "resources": {"cpus": 1}},
        "a_dedup": {"stage": "data.dedup", "inputs": {"data": "${a}"}, "resources": {"cpus": 1}},
        "b": {"stage": "data.synth", "config": {"task": "support-intent", "n": n, "seed": 1}, "resources": {"cpus": 1}},
        "b_dedup": {"stage": "data.dedup", "inputs": {"data": "${b}"}, "resources": {"cpus": 1}},
    }}


def run_branches(executor: str, n: int) -> float:
    from slmops.pipeline.execute import run_recipe
    from slmops.pipeline.recipe import parse_recipe
    from slmops.store import Store

    with tempfile.TemporaryDirectory() as home, Store(home) as store:
        t = time.perf_counter()
        run_recipe(parse_recipe(branches_recipe(n)), store=store, executor=executor)
        return time.perf_counter() - t


def bench_branches(pairs: int, n: int) -> dict[str, Any]:
    run_branches("ray", 200)  # warm the workers (imports) once
    rows = []
    for i in range(pairs):
        first, second = ("local", "ray") if i % 2 == 0 else ("ray", "local")
        t = {first: run_branches(first, n), second: run_branches(second, n)}
        rows.append({"local_s": round(t["local"], 2), "ray_s": round(t["ray"], 2), "ratio": round(t["ray"] / t["local"], 3), "load": load()})
    return {"n": n, "rows": rows, "median_ratio": statistics.median(r["ratio"] for r in rows)}


# -- teacher ---------------------------------------------------------------------------------------
def serve_teacher(port: int, latency: float) -> None:
    """An OpenAI-compatible chat endpoint answering every request after ``latency`` seconds (child process)."""
    import asyncio

    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(body: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(latency)
        text = "answer to: " + str(body["messages"][-1]["content"])[:60]
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="critical", access_log=False)


class Clock:
    """A progress sink timing each answer of the ``teacher answers`` task."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.times: list[float] = []

    def start(self, task_id: int, description: str, total: float | None) -> None:
        self.names[task_id] = description

    def update(self, task_id: int, completed: float, fields: dict[str, Any]) -> None:
        if self.names.get(task_id) == "teacher answers" and completed > 0:
            self.times.append(time.perf_counter())

    def finish(self, task_id: int) -> None: ...


def run_teacher(store: Any, prompts: Any, url: str, workers: int, concurrency: int) -> dict[str, float]:
    from slmops import progress
    from slmops.stage.runner import run_stage

    cfg = {"base_url": url, "model": "t"}
    options = {"cache": False, "concurrency": concurrency, "executor": "ray", "workers": workers}
    clock = Clock()
    t = time.perf_counter()
    with progress.use_sink(clock):
        run_stage("distill.generate", {"prompts": prompts}, cfg, store=store, force=True, options=options)
    wall = time.perf_counter() - t
    n = len(clock.times)
    k = n // 10
    return {"answers": n, "wall_s": round(wall, 2), "end_to_end_per_s": round(n / wall, 1),
            "steady_per_s": round((n - k) / (clock.times[-1] - clock.times[k]), 1)}


def bench_teacher(pairs: int, prompts_n: int, latency: float, concurrency: int) -> dict[str, Any]:
    from slmops.stage.runner import run_stage
    from slmops.store import Store
    from slmops.testing.server import free_port

    port = free_port()
    child = subprocess.Popen([sys.executable, __file__, "--serve-teacher", str(port), "--latency", str(latency)])
    try:
        url = f"http://127.0.0.1:{port}/v1"
        _wait_http(url)
        with tempfile.TemporaryDirectory() as home, Store(home) as store:
            prompts = run_stage("data.synth", {}, {"task": "support-intent", "n": prompts_n, "prompts_only": True}, store=store).artifact
            run_teacher(store, prompts, url, 2, concurrency)  # warm-up
            rows = []
            for i in range(pairs):
                order = (1, 2) if i % 2 == 0 else (2, 1)
                got = {w: run_teacher(store, prompts, url, w, concurrency) for w in order}
                rows.append({"one": got[1], "two": got[2], "load": load(),
                             "steady_ratio": round(got[2]["steady_per_s"] / got[1]["steady_per_s"], 3),
                             "end_to_end_ratio": round(got[2]["end_to_end_per_s"] / got[1]["end_to_end_per_s"], 3)})
    finally:
        child.terminate()
        child.wait(10)
    return {"prompts": prompts_n, "latency_s": latency, "concurrency_per_worker": concurrency, "rows": rows,
            "median_steady_ratio": statistics.median(r["steady_ratio"] for r in rows),
            "median_end_to_end_ratio": statistics.median(r["end_to_end_ratio"] for r in rows)}


def _wait_http(url: str) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.post(f"{url}/chat/completions", json={"model": "t", "messages": [{"role": "user", "content": "hi"}]}, timeout=5)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("the benchmark endpoint did not start")


# -- push / pull -----------------------------------------------------------------------------------
def bench_push(size_mb: int, endpoint: str) -> dict[str, Any]:
    from slmops.store import Store
    from slmops.store.remotes import add_remote
    from slmops.store.sync import pull, push

    url = f"s3://slmops-test/{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b, Store(a) as store, Store(b) as other:
        src = Path(a) / "src"
        src.mkdir()
        with open(src / "model.safetensors", "wb") as f:
            for _ in range(size_mb):
                f.write(os.urandom(1_000_000))
        (src / "config.json").write_text('{"arch": "llama"}')
        art = store.commit(src, kind="model", format="hf-safetensors", name="big")
        add_remote(store, "bench", url, endpoint_url=endpoint)
        add_remote(other, "bench", url, endpoint_url=endpoint)
        t = time.perf_counter()
        first = push(store, "big")
        t1 = time.perf_counter()
        again = push(store, "big")
        t2 = time.perf_counter()
        got = pull(other, "big")
        t3 = time.perf_counter()
        other.get(art.digest).verify()
        return {"size_bytes": art.manifest.size_bytes, "first_push_bytes": first.bytes_transferred, "first_push_s": round(t1 - t, 2),
                "second_push_bytes": again.bytes_transferred, "second_push_s": round(t2 - t1, 3),
                "pull_bytes": got.bytes_transferred, "pull_verified_bytes": got.bytes_verified, "pull_s": round(t3 - t2, 2), "load": load()}


# -- main ------------------------------------------------------------------------------------------
def markdown(res: dict[str, Any]) -> str:
    lines = ["# Scale benchmarks (benchmarks/scale_bench.py)", "", f"Machine: {os.cpu_count()} cores; load average (1/5/15 min) per row.", ""]
    if "branches" in res:
        b = res["branches"]
        lines += ["## Two independent branches: local executor vs Ray (2-CPU cluster, shared-fs)", "",
                  f"Each branch: data.synth support-intent n={b['n']} (seeds 0 and 1) → data.dedup, one thread. Goal: ray/local ≤ 0.65.", "",
                  "| pair | local s | ray s | ray/local | load |", "|---|---|---|---|---|"]
        lines += [f"| {i + 1} | {r['local_s']} | {r['ray_s']} | {r['ratio']} | {r['load']} |" for i, r in enumerate(b["rows"])]
        lines += ["", f"**Median ray/local: {b['median_ratio']:.3f}**", ""]
    if "teacher" in res:
        t = res["teacher"]
        lines += ["## Sharded teacher generation: 1 vs 2 Ray workers", "",
                  f"{t['prompts']} prompts, endpoint latency {t['latency_s']} s per request (asyncio, own process), "
                  f"{t['concurrency_per_worker']} requests in flight per worker. Goal: 2 workers ≥ 1.7× the answers/s of 1.", "",
                  "| pair | 1 worker ans/s (steady / end-to-end) | 2 workers ans/s (steady / end-to-end) | ratio steady | ratio end-to-end | load |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {i + 1} | {r['one']['steady_per_s']} / {r['one']['end_to_end_per_s']} | {r['two']['steady_per_s']} / "
                  f"{r['two']['end_to_end_per_s']} | {r['steady_ratio']} | {r['end_to_end_ratio']} | {r['load']} |" for i, r in enumerate(t["rows"])]
        lines += ["", f"**Median ratio: steady {t['median_steady_ratio']:.3f}, end to end {t['median_end_to_end_ratio']:.3f}**", ""]
    if "push" in res:
        p = res["push"]
        lines += ["## Push / pull of a 100 MB model (moto S3 on 127.0.0.1)", "", "| measure | value |", "|---|---|",
                  f"| model size | {p['size_bytes']:,} B |", f"| first push | {p['first_push_bytes']:,} B in {p['first_push_s']} s |",
                  f"| second push (unchanged) | **{p['second_push_bytes']:,} B** in {p['second_push_s']} s |",
                  f"| pull into an empty store | {p['pull_bytes']:,} B moved, **{p['pull_verified_bytes']:,} B verified** in {p['pull_s']} s |",
                  f"| load | {p['load']} |", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="branches,teacher,push", help="Comma-separated: branches, teacher, push.")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--branch-n", type=int, default=BRANCH_N)
    ap.add_argument("--prompts", type=int, default=400)
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--serve-teacher", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_teacher:
        serve_teacher(args.serve_teacher, args.latency)
        return
    from slmops.testing.scale import ray_cluster, s3_endpoint

    parts = args.parts.split(",")
    res: dict[str, Any] = {}

    def save(part: str, value: dict[str, Any]) -> None:  # after every part, so a later failure loses nothing
        res[part] = value
        print(json.dumps({part: value}, indent=2), flush=True)
        if args.out:
            args.out.write_text(markdown(res))
            args.out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")

    with s3_endpoint() as endpoint:
        if "push" in parts:
            save("push", bench_push(args.size_mb, endpoint))
        if {"branches", "teacher"} & set(parts):
            with ray_cluster(num_cpus=2):
                if "teacher" in parts:
                    save("teacher", bench_teacher(args.pairs, args.prompts, args.latency, args.concurrency))
                if "branches" in parts:
                    save("branches", bench_branches(args.pairs, args.branch_n))


if __name__ == "__main__":
    main()
