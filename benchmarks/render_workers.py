"""What a chat-template worker costs: starting one against reusing an idle one, and its memory.

The server renders chat templates in worker processes (``slmops.data.render_worker``) and keeps one
idle per slot (``RenderPool(keep_idle=max_loaded × parallel)``), because a burst of chats beyond the
idle workers starts new processes. This measures, over ``--rounds`` rounds: the wall time of taking a
worker from an empty pool (a process start: interpreter + Jinja import), of taking an idle one, the
CPU the started child used, and each worker's resident memory. Run:

    .venv/bin/python benchmarks/render_workers.py --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from slmops.data.render_worker import RenderBudget, RenderPool


def child_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds, resident MB) of a child process, from /proc."""
    proc = Path("/proc") / str(pid)
    fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss_kb = next(int(line.split()[1]) for line in (proc / "status").read_text().splitlines() if line.startswith("VmRSS:"))
    return cpu, rss_kb / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    memory_mb = RenderBudget().memory_mb
    start_ms, reuse_ms, cpu_ms, rss_mb = [], [], [], []
    for _ in range(args.rounds):
        pool = RenderPool(keep_idle=1)
        try:
            t0 = time.perf_counter()
            w = pool.take(memory_mb)  # empty pool: a process starts
            start_ms.append(1000 * (time.perf_counter() - t0))
            cpu, rss = child_stats(w.proc.pid)
            cpu_ms.append(1000 * cpu)
            rss_mb.append(rss)
            pool.give_back(w)
            t0 = time.perf_counter()
            w = pool.take(memory_mb)  # the idle one
            reuse_ms.append(1000 * (time.perf_counter() - t0))
            pool.give_back(w)
        finally:
            pool.close()
    med = statistics.median
    print(f"medians of {args.rounds} rounds\n")
    print("| take a worker | wall ms | child CPU ms | child RSS MB |\n|---|---|---|---|")
    print(f"| start one (empty pool) | {med(start_ms):.1f} | {med(cpu_ms):.0f} | {med(rss_mb):.1f} |")
    print(f"| reuse an idle one | {med(reuse_ms):.3f} | – | – |")


if __name__ == "__main__":
    main()
