"""HTTP load generator: streamed chat requests to any OpenAI-compatible server at several concurrency levels.

For every (prompt length, output length) pair and every concurrency level C, N requests are sent
with at most C in flight (:class:`slmops.client.AsyncOpenAIClient`, ``stream=True`` with
``stream_options.include_usage``; no retries: a failed request is counted, not hidden).
Each request is timed from sending to its first content chunk (TTFT), between chunks (ITL) and to
its last chunk (latency); output tokens come from the server's usage report, else the number of
content chunks. A level is bounded in count (``requests``) and in time (``max_duration_s``, after
which unfinished requests are cancelled and counted as failed), and every request has a timeout,
so the generator always stops by itself. Prompt lengths are in words (no tokenizer is needed);
the server's reported prompt tokens are recorded next to them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from slmops import progress
from slmops.bench.config import BenchConfig
from slmops.bench.prompts import filler_text
from slmops.bench.stats import RequestTiming, aggregate, itls
from slmops.client import AsyncOpenAIClient, ClientError, OpenAIClient, chat_body, delta_text, normalize_base_url
from slmops.errors import ConfigError

log = logging.getLogger(__name__)


async def _one(client: AsyncOpenAIClient, body: dict[str, Any]) -> RequestTiming:
    t0 = time.perf_counter()
    stamps: list[float] = []
    usage: dict[str, Any] = {}
    try:
        async for chunk in client.stream(body):
            usage = chunk.get("usage") or usage
            if delta_text(chunk):
                stamps.append(time.perf_counter())  # one stamp per content chunk: TTFT and ITL come from these
    except ClientError as exc:
        return RequestTiming(ok=False, latency=time.perf_counter() - t0, error=exc.error)
    if not stamps:
        return RequestTiming(ok=False, latency=time.perf_counter() - t0, error="no content in the stream")
    n_out = int(usage.get("completion_tokens") or len(stamps))
    return RequestTiming(ok=True, latency=stamps[-1] - t0, ttft=stamps[0] - t0, output_tokens=n_out,
                         prompt_tokens=usage.get("prompt_tokens"), itl=tuple(itls(stamps)))


async def _level(client: AsyncOpenAIClient, bodies: list[dict[str, Any]], concurrency: int, max_duration_s: float,
                 bar: progress.Task) -> tuple[list[RequestTiming], float]:
    sem = asyncio.Semaphore(concurrency)

    async def guarded(body: dict[str, Any]) -> RequestTiming:
        async with sem:
            t = await _one(client, body)
        bar.advance()
        return t

    t0 = time.perf_counter()
    tasks = [asyncio.ensure_future(guarded(b)) for b in bodies]
    done, pending = await asyncio.wait(tasks, timeout=max_duration_s)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
        log.warning("%d request(s) cancelled at the %.0f s limit of concurrency %d", len(pending), max_duration_s, concurrency)
    wall = time.perf_counter() - t0
    timings = [t.result() for t in tasks if t in done and not t.cancelled()]
    timings += [RequestTiming(ok=False, latency=max_duration_s, error="cancelled at the time limit") for _ in pending]
    return timings, wall


async def _run(base_url: str, model: str, cfg: BenchConfig) -> list[dict[str, Any]]:
    levels: list[dict[str, Any]] = []
    async with AsyncOpenAIClient(base_url, api_key_env=cfg.api_key_env, timeout_s=cfg.request_timeout_s, max_connections=max(cfg.concurrency)) as client:
        for p, o in cfg.grid():
            for c in cfg.concurrency:
                bodies = [chat_body(model, [{"role": "user", "content": filler_text(p, i)}], max_tokens=o, stream=True,
                                    ignore_eos=cfg.ignore_eos) for i in range(cfg.requests + cfg.warmup * c)]
                with progress.task(f"bench {model} p={p} o={o} c={c}", total=len(bodies)) as bar:
                    if cfg.warmup:
                        await _level(client, bodies[: cfg.warmup * c], c, cfg.max_duration_s, bar)
                    timings, wall = await _level(client, bodies[cfg.warmup * c :], c, cfg.max_duration_s, bar)
                stats = aggregate(timings, wall, cfg.slo or None)
                errors = [t.error for t in timings if t.error]
                levels.append({"prompt_words": p, "output_tokens": o, "concurrency": c, **stats, "first_error": errors[0] if errors else None,
                               "prompt_tokens_reported": next((t.prompt_tokens for t in timings if t.prompt_tokens), None),
                               "samples": [t.to_dict() for t in timings]})
    return levels


def bench_http(cfg: BenchConfig) -> dict[str, Any]:
    """Run the load test described by ``cfg`` (``cfg.url`` set) and return per-level statistics."""
    assert cfg.url
    base_url = normalize_base_url(cfg.url)
    model = cfg.model_name
    if model is None:  # the server's first model; also fails fast when the server is unreachable
        with OpenAIClient(base_url, api_key_env=cfg.api_key_env, timeout_s=cfg.request_timeout_s, purpose="benchmarking a server over HTTP") as c:
            listed = c.models()
        if not listed:
            raise ConfigError(f"{base_url} lists no models", fix="name one with --model-name")
        model = listed[0]
    levels = asyncio.run(_run(base_url, model, cfg))
    return {"target": {"kind": "http", "url": base_url, "model": model}, "levels": levels}
