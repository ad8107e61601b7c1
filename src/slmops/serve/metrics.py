"""Prometheus metrics of one server (its own registry, so several servers can live in one process).

Labels: ``model`` is the id the client asked for (``bot@prod``), ``version`` the registry version
that answered (``bot:3``) — so a canary's versions are told apart; ``status`` the HTTP status;
``kind`` an error's code (``queue_full``, ``context_length_exceeded``, …).
"""

from __future__ import annotations

from typing import Any

from slmops._optional import require

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_TPOT = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_TOKENS = (1, 8, 32, 128, 512, 2048, 8192, 32768)


class Metrics:
    """The server's counters, gauges and histograms."""

    def __init__(self) -> None:
        pc = require("prometheus_client", extra="serve", purpose="/metrics")
        self._pc = pc
        self.registry = pc.CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = pc.Counter("slmops_requests", "Requests by model, version, route and status", ["model", "version", "route", "status"], registry=r)
        self.latency = pc.Histogram("slmops_request_latency_seconds", "End-to-end request latency", ["model", "version"], buckets=_LATENCY, registry=r)
        self.ttft = pc.Histogram("slmops_time_to_first_token_seconds", "Time to first token", ["model", "version"], buckets=_LATENCY, registry=r)
        self.tpot = pc.Histogram("slmops_time_per_output_token_seconds", "Time per output token after the first", ["model", "version"], buckets=_TPOT, registry=r)
        self.prompt_tokens = pc.Counter("slmops_prompt_tokens", "Prompt tokens processed", ["model", "version"], registry=r)
        self.completion_tokens = pc.Counter("slmops_completion_tokens", "Completion tokens generated", ["model", "version"], registry=r)
        self.prompt_len = pc.Histogram("slmops_request_prompt_tokens", "Prompt length per request", ["model"], buckets=_TOKENS, registry=r)
        self.queue_depth = pc.Gauge("slmops_queue_depth", "Requests waiting per loaded model", ["model"], registry=r)
        self.running = pc.Gauge("slmops_running_requests", "Requests generating per loaded model", ["model"], registry=r)
        self.loaded = pc.Gauge("slmops_loaded_models", "Base models loaded", registry=r)
        self.adapters = pc.Gauge("slmops_loaded_adapters", "Adapters loaded on top of loaded models", registry=r)
        self.errors = pc.Counter("slmops_errors", "Errors by kind", ["kind"], registry=r)
        self.loads = pc.Counter("slmops_model_loads", "Model loads", registry=r)
        self.quality = pc.Gauge("slmops_quality_score", "Running mean judge score (0-1) of the sampled requests (monitor sample, serve --judge)",
                                ["model", "version"], registry=r)
        self.judged = pc.Gauge("slmops_judged_requests", "Requests scored by the judge so far", ["model", "version"], registry=r)
        self.batch_steps = pc.Gauge("slmops_batch_steps", "Batched forward steps run per loaded model (llama.cpp batcher)", ["model"], registry=r)
        self.batch_size_mean = pc.Gauge("slmops_batch_size_mean", "Mean sequences per batched step", ["model"], registry=r)
        self.batch_size_max = pc.Gauge("slmops_batch_size_max", "Most sequences in one batched step", ["model"], registry=r)
        self.prefix_hits = pc.Gauge("slmops_prefix_cache_hits", "Requests that reused cached KV cells of a common prompt prefix", ["model"], registry=r)
        self.prefix_hit_tokens = pc.Gauge("slmops_prefix_cache_hit_tokens", "Prompt tokens taken from the prefix cache instead of recomputed",
                                          ["model"], registry=r)
        self.prefix_prompt_tokens = pc.Gauge("slmops_prefix_cache_prompt_tokens", "Prompt tokens of the requests the batcher admitted", ["model"], registry=r)
        self.batch_time = pc.Gauge("slmops_batch_seconds", "Seconds the llama.cpp batcher spent, by part: engine (llama_decode), "
                                   "sampling, detokenise (with stop strings), other (building the batch, handing out events)", ["model", "part"], registry=r)
        self.batch_tokens = pc.Gauge("slmops_batch_tokens", "Tokens the llama.cpp batcher generated", ["model"], registry=r)
        self.drift = pc.Gauge("slmops_drift_score", "Drift of logged prompts against the baseline (max PSI; >0.25 significant)", ["model"], registry=r)

    def observe_pool(self, pool: Any) -> None:
        """Refresh the gauges from the pool (called before every scrape and on pool changes)."""
        entries = list(pool.entries.values())
        self.loaded.set(len(entries))
        self.adapters.set(sum(len(e.adapters) for e in entries))
        for g in (self.queue_depth, self.running, self.batch_steps, self.batch_size_mean, self.batch_size_max,
                  self.prefix_hits, self.prefix_hit_tokens, self.prefix_prompt_tokens, self.batch_time, self.batch_tokens):
            g.clear()
        for e in entries:
            self.queue_depth.labels(e.label).set(e.scheduler.waiting)
            self.running.labels(e.label).set(e.scheduler.running)
            stats = e.engine.stats
            if stats is not None:
                self.batch_steps.labels(e.label).set(stats.steps)
                self.batch_size_mean.labels(e.label).set(stats.step_sequences / stats.steps if stats.steps else 0.0)
                self.batch_size_max.labels(e.label).set(stats.max_batch)
                self.prefix_hits.labels(e.label).set(stats.prefix_hits)
                self.prefix_hit_tokens.labels(e.label).set(stats.prefix_hit_tokens)
                self.prefix_prompt_tokens.labels(e.label).set(stats.prompt_tokens)
                self.batch_tokens.labels(e.label).set(stats.tokens)
                for part, value in (("engine", stats.engine_s), ("sampling", stats.decoder_s[0]), ("detokenise", stats.decoder_s[1]),
                                    ("other", stats.step_s - stats.engine_s - sum(stats.decoder_s))):
                    self.batch_time.labels(e.label, part).set(value)

    def observe_quality(self, scores: dict[str, tuple[float, int]], served: list[tuple[str, str, str]]) -> None:
        """Set the quality gauges of each served ``(model id, version, digest)`` that the judge has scored."""
        for model_id, version, digest in served:
            if digest in scores:
                mean, n = scores[digest]
                self.quality.labels(model_id, version).set(mean)
                self.judged.labels(model_id, version).set(n)

    def render(self) -> tuple[bytes, str]:
        return self._pc.generate_latest(self.registry), self._pc.CONTENT_TYPE_LATEST
