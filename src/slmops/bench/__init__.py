"""Speed benchmarks: a local prompt × output grid on a runtime, and an HTTP load generator for any OpenAI-compatible server.

Entry points: :func:`slmops.bench.local.bench_runtime` / :func:`~slmops.bench.local.bench_isolated`,
:func:`slmops.bench.http.bench_http`; the ``bench`` stage wraps them. Statistics follow vLLM's
definitions (:mod:`slmops.bench.stats`). :func:`slmops.bench.worker.run_fresh` is the one way to
measure in a fresh process (the benchmark, the optimizer's speed probe, the distillation report).
"""
