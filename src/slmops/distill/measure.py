"""Measuring one model on a test split, alone in its own process (so its peak memory is its own).

:func:`measure` returns parameters, weights on disk, load time, the process's resident memory
before the model was loaded (``baseline_rss_bytes``: Python, torch, transformers, the architecture's
code, the tokenizer, the data) and at its peak, latency of every response (greedy, the model's own
chat template), throughput, and the task score. :func:`slmops.distill.report.measure_in_subprocess`
runs it in a fresh process (:func:`slmops.bench.worker.run_fresh`) once per model, and
:func:`slmops.distill.report.retention` compares.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from slmops.bench.memory import peak_rss_bytes
from slmops.data.records import Record


def score(prediction: str, record: Record, metric: str = "auto") -> float:
    """1.0 when the prediction is right: the label (``accuracy``) or the reference answer (``exact_match``).

    ``auto``: JSON answers compare as parsed JSON, others as labels (lower-case, trimmed of
    spaces, quotes and final punctuation) against the reference answer, else the label.
    """
    from slmops.evaluate.jsonmetrics import is_json, parse_json_output
    from slmops.evaluate.metrics import accuracy, exact_match

    reference = record.completion
    if metric == "accuracy" or (metric == "auto" and reference is None):
        return accuracy(prediction, record.label) if record.label is not None else 0.0
    if reference is None:
        return 0.0
    if metric == "exact_match":
        return exact_match(prediction, reference)
    ref_json = parse_json_output(reference)
    if is_json(ref_json):
        got = parse_json_output(prediction)
        return float(is_json(got) and got == ref_json)
    return accuracy(prediction, reference)


def _before_the_model(model_dir: Path) -> None:
    """Import the architecture's code and load the tokenizer (no weights): the baseline then holds
    everything but the network itself (teacher and student of a logit-KD pair share a tokenizer)."""
    import torch
    import transformers

    from slmops.models.loading import load_tokenizer, quiet_progress

    with quiet_progress():
        config = transformers.AutoConfig.from_pretrained(str(model_dir), trust_remote_code=False, local_files_only=True)
        transformers.AutoModelForCausalLM._model_mapping[type(config)]
    load_tokenizer(model_dir)
    torch.ones(8, 8) @ torch.ones(8, 8)  # start torch's thread pool and allocator


def measure(
    model_dir: str | Path, data_dir: str | Path, *, split: str, limit: int | None, max_tokens: int, metric: str, warmup: int, threads: int | None
) -> dict[str, Any]:
    """The measurement (run it in a fresh process: the memory figures are the whole process's)."""
    import torch

    from slmops.data.io import read_dataset
    from slmops.models.loading import count_parameters
    from slmops.runtimes import open_runtime
    from slmops.runtimes.base import GenerationParams

    model_dir, data_dir = Path(model_dir), Path(data_dir)
    if threads:
        torch.set_num_threads(threads)
    records = read_dataset(data_dir, split)
    records = records[:limit] if limit else records
    _before_the_model(model_dir)
    baseline = peak_rss_bytes()
    t0 = time.perf_counter()
    rt: Any = open_runtime(model_dir, runtime="torch")
    load_s = time.perf_counter() - t0
    params = GenerationParams(max_tokens=max_tokens, temperature=0.0)
    prompts = [
        rt.apply_chat_template([m.model_dump(exclude_none=True) for m in r.prompt_messages], add_generation_prompt=True) for r in records
    ]
    for p in prompts[:warmup]:
        rt.generate(p, params)
    latencies, tokens, scores, samples = [], 0, [], []
    for rec, prompt in zip(records, prompts, strict=True):
        t = time.perf_counter()
        res = rt.generate(prompt, params)
        latencies.append(time.perf_counter() - t)
        tokens += res.completion_tokens
        scores.append(score(res.text, rec, metric))
        if len(samples) < 5:
            samples.append({"prediction": res.text, "reference": rec.completion, "label": rec.label})
    total = sum(latencies)
    weights = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    return {
        "parameters": count_parameters(rt.model),
        "weights_bytes": weights,
        "load_s": round(load_s, 4),
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": peak_rss_bytes(),
        "model_rss_bytes": max(0, peak_rss_bytes() - baseline),
        "responses": len(records),
        "mean_latency_s": round(total / len(records), 6) if records else None,
        "p50_latency_s": round(sorted(latencies)[len(latencies) // 2], 6) if latencies else None,
        "throughput_tok_s": round(tokens / total, 3) if total else None,
        "responses_per_s": round(len(records) / total, 3) if total else None,
        "completion_tokens": tokens,
        "accuracy": round(sum(scores) / len(scores), 6) if scores else None,
        "threads": torch.get_num_threads(),
        "samples": samples,
    }
