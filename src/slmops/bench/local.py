"""Local speed benchmark: a prompt-length × output-length grid on a runtime, with warm-up and repetitions.

For every cell the prompt is exactly P tokens of filler text and generation is forced to O tokens
(``ignore_eos``), so cells are comparable across models. Each run streams tokens and timestamps
them: TTFT, TPOT, ITL and end-to-end latency come from those stamps (:mod:`slmops.bench.stats`).
Memory is sampled during the run; load time is the time to open the runtime; size is the
artifact's bytes on disk.

With ``isolate`` (the default for the ``bench`` stage) the measurement (:func:`bench_fresh`) runs in a
fresh Python process (:func:`slmops.bench.worker.run_fresh`), so peak RSS and load time belong to that
model alone rather than to whatever this process loaded before; its progress is relayed to this
process's progress bar.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmops import progress
from slmops.bench.config import BenchConfig
from slmops.bench.memory import RssSampler, current_rss, dir_size, lifetime_peak_rss
from slmops.bench.prompts import prompt_ids
from slmops.bench.stats import RequestTiming, aggregate, itls

if TYPE_CHECKING:
    from slmops.runtimes.base import Runtime

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]


def time_one(rt: Runtime, ids: list[int], output_tokens: int) -> RequestTiming:
    """One streamed generation of exactly ``output_tokens`` tokens, timestamped per token."""
    from slmops.runtimes.base import GenerationParams

    params = GenerationParams(max_tokens=output_tokens, ignore_eos=True, temperature=0.0)
    stamps: list[float] = []
    t0 = time.perf_counter()
    for _ev in rt.stream(ids, params):
        stamps.append(time.perf_counter())
    if not stamps:
        return RequestTiming(ok=False, latency=time.perf_counter() - t0, error="no tokens")
    return RequestTiming(ok=True, latency=stamps[-1] - t0, ttft=stamps[0] - t0, output_tokens=len(stamps),
                         prompt_tokens=len(ids), itl=tuple(itls(stamps)))


def bench_runtime(rt: Runtime, cfg: BenchConfig, *, on_progress: Progress | None = None) -> dict[str, Any]:
    """Run the grid on an open runtime; returns per-cell and pooled statistics plus raw per-run samples."""
    grid = cfg.grid()
    total = len(grid) * (cfg.warmup + cfg.repetitions)
    done = 0
    cells: list[dict[str, Any]] = []
    pooled: list[RequestTiming] = []
    with RssSampler() as sampler:
        for p, o in grid:
            if p + o > rt.context_length:
                cells.append({"prompt_tokens": p, "output_tokens": o, "skipped": f"{p}+{o} tokens exceed the context of {rt.context_length}"})
                done += cfg.warmup + cfg.repetitions
                continue
            ids = prompt_ids(rt, p)
            runs: list[RequestTiming] = []
            for i in range(cfg.warmup + cfg.repetitions):
                t = time_one(rt, ids, o)
                if i >= cfg.warmup:
                    runs.append(t)
                done += 1
                if on_progress:
                    on_progress(done, total)
            pooled += runs
            stats = aggregate(runs, sum(r.latency for r in runs))
            cells.append({"prompt_tokens": p, "output_tokens": o, **stats, "samples": [r.to_dict() for r in runs]})
    summary = aggregate(pooled, sum(r.latency for r in pooled))
    return {"cells": cells, "summary": summary, "memory": {"peak_rss_bytes": sampler.peak, "rss_after_bytes": current_rss()}}


def bench_in_process(model_path: Path, cfg: BenchConfig, *, size_bytes: int | None = None) -> dict[str, Any]:
    """Open the model here and benchmark it (peak RSS then includes whatever this process already holds)."""
    from slmops.runtimes import open_runtime

    before = current_rss()
    t0 = time.perf_counter()
    rt = open_runtime(model_path, runtime=cfg.runtime)
    load_s = time.perf_counter() - t0
    loaded = current_rss()
    try:
        with progress.task(f"bench {model_path.name[:12]}", total=len(cfg.grid()) * (cfg.warmup + cfg.repetitions)) as bar:
            result = bench_runtime(rt, cfg, on_progress=lambda d, _t: bar.set(d))
        result["runtime"] = rt.name
        result["context_length"] = rt.context_length
    finally:
        rt.close()
    result["load_s"] = load_s
    result["size_bytes"] = size_bytes if size_bytes is not None else dir_size(model_path)
    result["memory"].update(rss_before_load_bytes=before, rss_model_bytes=max(0, loaded - before), isolated=False)
    return result


def bench_isolated(model_path: Path, cfg: BenchConfig, *, size_bytes: int | None = None, timeout_s: float = 3600) -> dict[str, Any]:
    """Benchmark in a fresh process (:func:`bench_fresh` through :func:`~slmops.bench.worker.run_fresh`); its peak RSS is the whole process's."""
    from slmops.bench.worker import run_fresh

    result = run_fresh("slmops.bench.local:bench_fresh", {"model_path": str(model_path), "config": cfg.model_dump(mode="json")},
                       label=f"bench {model_path.name[:12]} (isolated)", total=len(cfg.grid()) * (cfg.warmup + cfg.repetitions),
                       timeout_s=timeout_s, fix="run with --no-isolate to see the full traceback, or use a smaller grid")
    result["size_bytes"] = size_bytes if size_bytes is not None else dir_size(model_path)
    return result


def bench_fresh(model_path: str, config: dict[str, Any], on_progress: Progress | None = None) -> dict[str, Any]:
    """The fresh process's body: open the model (timed, its engine imported first), benchmark it, report the process's own peak RSS."""
    from slmops.runtimes import open_runtime

    path = Path(model_path)
    cfg = BenchConfig.model_validate(config)
    t_warm = time.perf_counter()
    warm_engine(path, cfg.runtime)
    warmup_s = time.perf_counter() - t_warm
    before = current_rss()
    t0 = time.perf_counter()
    rt = open_runtime(path, runtime=cfg.runtime)
    load_s = time.perf_counter() - t0
    loaded = current_rss()
    result = bench_runtime(rt, cfg, on_progress=on_progress)
    result.update(runtime=rt.name, context_length=rt.context_length, load_s=load_s, engine_import_s=warmup_s)
    result["memory"].update(rss_before_load_bytes=before, rss_model_bytes=max(0, loaded - before), isolated=True,
                            peak_rss_bytes=max(result["memory"]["peak_rss_bytes"], lifetime_peak_rss() or 0))
    rt.close()
    return result


def warm_engine(path: Path, runtime: str = "auto") -> None:
    """Import the engine that will open ``path`` (and the model's transformers modules), so a timed load is the model's and not the library's."""
    import importlib

    from slmops.runtimes import planned_runtime

    spec = planned_runtime(path, runtime)  # an adapter: its base's runtime
    for mod in spec.imports:
        try:
            importlib.import_module(mod)
        except ImportError:
            pass
    if "transformers" in spec.imports:
        _warm_transformers(path)


def _warm_transformers(path: Path) -> None:
    """Import the architecture's transformers modules (lazily loaded, seconds on first use) before the timed load."""
    try:
        import transformers
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        model_type = json.loads((path / "config.json").read_text())["model_type"]
        _ = MODEL_FOR_CAUSAL_LM_MAPPING[type(transformers.AutoConfig.for_model(model_type))]
        _ = transformers.PreTrainedTokenizerFast
    except Exception as exc:  # noqa: BLE001 - best effort: the load is then timed cold
        log.debug("could not pre-import the model's transformers modules: %s", exc)
