"""``slmops eval``, ``bench``, ``compare`` and ``validate``: quality, speed, side-by-side reports and pre-ship checks.

Thin: each verb parses flags into the stage's config, runs the stage through the cached runner
(local results are cached; anything measured — a benchmark, a URL, a validation — is re-run unless
``--reuse``), renders the report, and exits 3 when a quality gate or a validation item fails.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated, Any

import typer

from slmops.cli.common import JsonOpt, open_cli_store
from slmops.cli.evaluate_render import show_bench, show_compare, show_eval, show_validate
from slmops.cli.render import emit, err, progress_bars
from slmops.errors import ConfigError

Target = Annotated[str | None, typer.Argument(help="Model or adapter reference (name, name:3, name@prod, sha256:…, ./folder); "
                                                   "an adapter runs on its recorded base; omit with --url.")]
Url = Annotated[str | None, typer.Option("--url", help="An OpenAI-compatible server instead of a local model, e.g. http://127.0.0.1:8000/v1.")]
ModelName = Annotated[str | None, typer.Option("--model-name", help="Model to request from --url (default: the first it lists).")]
KeyEnv = Annotated[str | None, typer.Option("--api-key-env", help="Environment variable holding the API key for --url (never stored).")]
Runtime = Annotated[str, typer.Option("--runtime", help="Local runtime: auto, torch, ort-genai or llamacpp.")]
Data = Annotated[str, typer.Option("--data", "-d", help="Dataset reference or file (.jsonl, .csv …).")]
Name = Annotated[str | None, typer.Option("--name", "-n", help="Registry name for the report.")]
Reuse = Annotated[bool, typer.Option("--reuse", help="Reuse a stored result for the same inputs and config instead of measuring again.")]
Force = Annotated[bool, typer.Option("--force", help="Re-run even when a cached result exists.")]
Limit = Annotated[int | None, typer.Option("--limit", help="Only the first N records.")]
Split = Annotated[str, typer.Option("--split", help="Split to use: auto (test, else the unsplit data, else validation), train, …")]
MaxTok = Annotated[int, typer.Option("--max-tokens", help="Most tokens generated per answer.")]
Schema = Annotated[Path | None, typer.Option("--schema", help="JSON Schema file for json_schema / json_field_match / the format check.")]


def csv(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def csv_ints(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in csv(text)]
    except ValueError as exc:
        raise ConfigError(f"{flag} {text!r} is not a list of whole numbers", fix=f"e.g. {flag} 1,2,4,8") from exc


def read_json_file(path: Path | None, flag: str) -> Any:
    if path is None:
        return None
    try:
        text = path.expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot read it", why=exc.strerror) from exc
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{flag} {path} is not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'}", why=str(exc)) from exc


def _model_or_url(store: Any, target: str | None, url: str | None) -> Any:
    from slmops.pipeline.inputs import resolve_input

    if (target is None) == (url is None):
        raise ConfigError("give a TARGET or --url (one of them)", fix="slmops eval bot@prod --data d, or slmops eval --url http://127.0.0.1:8000/v1 --data d")
    from slmops import formats

    return resolve_input(target, store, kind=formats.runnable_kinds()) if target else None


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
    app.command("bench")(bench_cmd)
    app.command("compare")(compare_cmd)
    app.command("validate")(validate_cmd)


def eval_cmd(
    target: Target = None,
    data: Data = ...,  # type: ignore[assignment]
    metrics: Annotated[str, typer.Option("--metrics", "-m", help="Comma-separated: exact_match, token_f1, rouge_l, bleu, accuracy, "
                                         "json_valid, json_schema, json_field_match, perplexity, similarity, judge.")] = "exact_match,token_f1",
    gate: Annotated[list[str] | None, typer.Option("--gate", help='Quality gate (repeatable): "exact_match>=0.9", "accuracy>=0.95*ref". '
                                                   "Exit code 3 when one fails.")] = None,
    ref: Annotated[str | None, typer.Option("--ref", help="Reference model (or eval report) for retention and *ref gates.")] = None,
    url: Url = None, model_name: ModelName = None, api_key_env: KeyEnv = None, runtime: Runtime = "auto",
    split: Split = "auto", limit: Limit = None, max_tokens: MaxTok = 128,
    temperature: Annotated[float, typer.Option("--temperature", help="0 = greedy (reproducible).")] = 0.0,
    stop: Annotated[list[str] | None, typer.Option("--stop", help="Stop string (repeatable).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Examples per checkpointed batch; concurrent requests for --url.")] = 8,
    log_samples: Annotated[bool, typer.Option("--log-samples", help="Save every example's prompt, output and scores with the report.")] = False,
    samples_out: Annotated[Path | None, typer.Option("--samples-out", help="Also copy samples.jsonl here (implies --log-samples).")] = None,
    schema: Schema = None,
    json_fields: Annotated[str | None, typer.Option("--json-fields", help="Fields compared by json_field_match (comma-separated).")] = None,
    embedding_model: Annotated[str | None, typer.Option("--embedding-model", help="Local embedding model folder for similarity.")] = None,
    judge_url: Annotated[str | None, typer.Option("--judge-url", help="OpenAI-compatible endpoint of the judge model.")] = None,
    judge_model: Annotated[str | None, typer.Option("--judge-model", help="Judge model name.")] = None,
    judge_api_key_env: Annotated[str | None, typer.Option("--judge-api-key-env", help="Environment variable with the judge's API key.")] = None,
    judge_criteria: Annotated[str | None, typer.Option("--judge-criteria", help="Built-in criteria: relevance,coherence.")] = None,
    judge_rubric: Annotated[Path | None, typer.Option("--judge-rubric", help="YAML/JSON file: criterion -> description.")] = None,
    executor: Annotated[str, typer.Option("--executor", help="local, or ray: shard the examples over Ray actors (slmops[scale]).")] = "local",
    workers: Annotated[int, typer.Option("--workers", help="Ray actors (shards) with --executor ray.")] = 1,
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster for --executor ray (default RAY_ADDRESS, else local).")] = None,
    name: Name = None, force: Force = False, reuse: Reuse = False, as_json: JsonOpt = False,
) -> None:
    """Evaluate a model or an OpenAI-compatible server on a dataset; gates fail the command with exit code 3."""
    from slmops.evaluate.gates import check_gates, enforce, gate_metrics, parse_gates
    from slmops.evaluate.report import load_report
    from slmops.pipeline.inputs import resolve_input
    from slmops.stage.runner import run_stage

    gates = parse_gates(gate or [])
    relative = [g.text for g in gates if g.relative]
    if relative and not ref:  # checked before any work is done
        raise ConfigError(f"--gate {relative[0]!r} compares with ref, but no reference was given", fix="pass --ref REF")
    wanted = csv(metrics)
    for m in gate_metrics(gates):  # a gate's metric is computed even when --metrics forgot it
        base = "judge" if m.startswith("judge_") else m
        if base not in wanted:
            wanted.append(base)
    cfg: dict[str, Any] = {
        "metrics": wanted, "split": split, "limit": limit, "max_tokens": max_tokens, "temperature": temperature, "stop": stop or [],
        "runtime": runtime, "url": url, "model_name": model_name, "api_key_env": api_key_env, "batch_size": batch_size,
        "log_samples": log_samples or samples_out is not None, "json_schema": read_json_file(schema, "--schema"),
        "json_fields": csv(json_fields) or None, "embedding_model": embedding_model, "judge_url": judge_url, "judge_model": judge_model,
        "judge_api_key_env": judge_api_key_env, "judge_criteria": csv(judge_criteria) or None,
        "judge_rubric": read_json_file(judge_rubric, "--judge-rubric"),
        "executor": executor, "workers": workers, "ray_address": address,
    }
    with open_cli_store() as store, progress_bars(not as_json):
        model = _model_or_url(store, target, url)
        dataset = resolve_input(data, store, kind="dataset")
        inputs = {"data": dataset, **({"model": model} if model is not None else {})}
        ref_report = None
        if ref:
            ref_art = resolve_input(ref, store)
            if ref_art.kind != "report":
                ref_cfg = {**cfg, "url": None, "model_name": None, "api_key_env": None, "log_samples": False}
                ref_art = run_stage("eval", {"data": dataset, "model": ref_art}, ref_cfg, store=store).artifact
            inputs["ref"] = ref_art
            ref_report = load_report(ref_art)
        measured = url is not None and not reuse  # a server can change behind its URL: ask again unless --reuse
        r = run_stage("eval", inputs, cfg, store=store, output_name=name, force=force or measured)
        report = load_report(r.artifact)
    results = check_gates(gates, report["metrics"], (ref_report or {}).get("metrics"))
    if samples_out is not None:
        shutil.copyfile(r.artifact.file("samples.jsonl"), samples_out)
    payload = {"target": target or url, "digest": r.digest, "cached": r.cached, "name": f"{name}:{r.version}" if name and r.version else None,
               "path": str(r.artifact.path), "report": report, "gates": [g.to_dict() for g in results],
               "passed": all(g.passed for g in results)}
    emit(payload, as_json, show_eval)
    enforce(results)


def bench_cmd(
    target: Target = None,
    url: Url = None, model_name: ModelName = None, api_key_env: KeyEnv = None, runtime: Runtime = "auto",
    prompt_tokens: Annotated[str | None, typer.Option("--prompt-tokens", help="Prompt lengths (default 32,128; over HTTP 128 words).")] = None,
    output_tokens: Annotated[str | None, typer.Option("--output-tokens", help="Output lengths (default 16,64; over HTTP 64).")] = None,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed runs per cell / level.")] = 1,
    repetitions: Annotated[int, typer.Option("--repetitions", "-r", help="Timed runs per cell (local).")] = 3,
    isolate: Annotated[bool, typer.Option("--isolate/--no-isolate", help="Measure a local model in a fresh process.")] = True,
    concurrency: Annotated[str, typer.Option("--concurrency", "-c", help="Concurrency levels for --url.")] = "1,2,4,8",
    requests: Annotated[int, typer.Option("--requests", help="Requests per concurrency level (--url).")] = 32,
    slo: Annotated[list[str] | None, typer.Option("--slo", help="SLO for goodput (repeatable): ttft=500ms, tpot=50ms, e2e=2s.")] = None,
    max_duration: Annotated[str, typer.Option("--max-duration", help="Time limit per concurrency level (e.g. 300s).")] = "300s",
    request_timeout: Annotated[str, typer.Option("--request-timeout", help="Timeout of one HTTP request.")] = "120s",
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Ask the server for exact output lengths (vLLM / slmops serve).")] = False,
    name: Name = None, reuse: Reuse = False, as_json: JsonOpt = False,
) -> None:
    """Measure speed: TTFT, TPOT, ITL, latency p50/p95/p99, tokens/s, peak RSS, load time, size (local grid or HTTP load)."""
    from slmops.bench.stats import parse_slos
    from slmops.evaluate.report import load_report
    from slmops.stage.runner import run_stage
    from slmops.units import parse_duration

    cfg = {
        "prompt_tokens": csv_ints(prompt_tokens, "--prompt-tokens"), "output_tokens": csv_ints(output_tokens, "--output-tokens"),
        "warmup": warmup, "repetitions": repetitions, "runtime": runtime, "isolate": isolate, "url": url, "model_name": model_name,
        "api_key_env": api_key_env, "concurrency": csv_ints(concurrency, "--concurrency"), "requests": requests,
        "slo": parse_slos(slo or []), "max_duration_s": parse_duration(max_duration, flag="--max-duration"),
        "request_timeout_s": parse_duration(request_timeout, flag="--request-timeout"), "ignore_eos": ignore_eos,
    }
    with open_cli_store() as store, progress_bars(not as_json):
        model = _model_or_url(store, target, url)
        r = run_stage("bench", {"model": model} if model is not None else {}, cfg, store=store, output_name=name, force=not reuse)
        report = load_report(r.artifact)
    emit({"digest": r.digest, "cached": r.cached, "path": str(r.artifact.path), "headline": r.artifact.manifest.metrics, "report": report},
         as_json, show_bench)


def compare_cmd(
    targets: Annotated[list[str], typer.Argument(help="Two or more model references.")],
    data: Data = ...,  # type: ignore[assignment]
    ref: Annotated[str | None, typer.Option("--ref", help="Reference model for retention (default: the first).")] = None,
    metrics: Annotated[str, typer.Option("--metrics", "-m", help="Quality metrics (as for slmops eval).")] = "exact_match,token_f1",
    split: Split = "auto", limit: Limit = None, max_tokens: MaxTok = 128,
    schema: Schema = None,
    prompt_tokens: Annotated[str | None, typer.Option("--prompt-tokens", help="Benchmark prompt lengths.")] = None,
    output_tokens: Annotated[str | None, typer.Option("--output-tokens", help="Benchmark output lengths.")] = None,
    repetitions: Annotated[int, typer.Option("--repetitions", "-r", help="Timed runs per benchmark cell.")] = 3,
    isolate: Annotated[bool, typer.Option("--isolate/--no-isolate", help="Benchmark each model in a fresh process.")] = True,
    title: Annotated[str, typer.Option("--title", help="Report title.")] = "Model comparison",
    html: Annotated[Path | None, typer.Option("--html", help="Write the HTML report (plots embedded) here.")] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="Write the Markdown report here (plots beside it).")] = None,
    report_json: Annotated[Path | None, typer.Option("--report-json", help="Write the JSON report here.")] = None,
    name: Name = None, force: Force = False, as_json: JsonOpt = False,
) -> None:
    """Compare models side by side: size, memory, speed, quality and retention vs a reference; HTML/Markdown/JSON report."""
    from slmops.evaluate.report import load_report
    from slmops.report.compare import compare

    eval_cfg = {"metrics": csv(metrics), "split": split, "limit": limit, "max_tokens": max_tokens,
                "json_schema": read_json_file(schema, "--schema")}
    bench_cfg = {"prompt_tokens": csv_ints(prompt_tokens, "--prompt-tokens"), "output_tokens": csv_ints(output_tokens, "--output-tokens"),
                 "repetitions": repetitions, "isolate": isolate}
    with open_cli_store() as store, progress_bars(not as_json):
        r = compare(targets, data, store=store, ref=ref, eval_config=eval_cfg, bench_config=bench_cfg, force=force, name=name, title=title)
        report = load_report(r.artifact)
    for path, rel in ((html, "report.html"), (markdown, "report.md"), (report_json, "report.json")):
        if path is not None:
            shutil.copyfile(r.artifact.file(rel), path)
            if rel == "report.md" and (r.artifact.path / "plots").is_dir():
                shutil.copytree(r.artifact.path / "plots", path.parent / "plots", dirs_exist_ok=True)
            err.print(f"wrote {path}", style="dim")
    emit({"digest": r.digest, "cached": r.cached, "path": str(r.artifact.path), "report": report}, as_json, show_compare)


def validate_cmd(
    target: Target = None,
    data: Data = ...,  # type: ignore[assignment]
    url: Url = None, model_name: ModelName = None, api_key_env: KeyEnv = None, runtime: Runtime = "auto",
    server_pid: Annotated[int | None, typer.Option("--server-pid", help="PID of the server behind --url, to watch its memory.")] = None,
    split: Split = "auto",
    limit: Annotated[int, typer.Option("--limit", help="Domain queries to ask.")] = 20,
    max_tokens: MaxTok = 64,
    min_answered: Annotated[float, typer.Option("--min-answered", help="Share of queries that must be answered.")] = 0.95,
    min_quality: Annotated[float | None, typer.Option("--min-quality", help="Minimum mean token F1 against the references.")] = None,
    format_threshold: Annotated[float, typer.Option("--format-threshold", help="Share of answers with the expected structure.")] = 0.9,
    schema: Schema = None,
    memory_requests: Annotated[int, typer.Option("--memory-requests", help="Requests in the memory-growth run.")] = 50,
    max_rss_slope_kb: Annotated[float, typer.Option("--max-rss-slope-kb", help="Largest RSS growth per request (KiB).")] = 64.0,
    latency_lengths: Annotated[str, typer.Option("--latency-lengths", help="Input lengths (words) for the latency check.")] = "16,64,256",
    max_tpot_ratio: Annotated[float, typer.Option("--max-tpot-ratio", help="Largest slowest/fastest time-per-token ratio.")] = 3.0,
    long_input_words: Annotated[int, typer.Option("--long-input-words", help="Words in the very-long-input edge case.")] = 8192,
    name: Name = None, reuse: Reuse = False, as_json: JsonOpt = False,
) -> None:
    """Run the pre-shipping checklist: domain answers, output format, memory growth, latency, edge cases (exit 3 on a fail)."""
    from slmops.evaluate.gates import GateFailed
    from slmops.evaluate.report import load_report
    from slmops.pipeline.inputs import resolve_input
    from slmops.stage.runner import run_stage

    cfg = {
        "split": split, "limit": limit, "max_tokens": max_tokens, "runtime": runtime, "url": url, "model_name": model_name,
        "api_key_env": api_key_env, "server_pid": server_pid, "min_answered": min_answered, "min_quality": min_quality,
        "format_threshold": format_threshold, "json_schema": read_json_file(schema, "--schema"), "memory_requests": memory_requests,
        "max_rss_slope_kb": max_rss_slope_kb, "latency_lengths": csv_ints(latency_lengths, "--latency-lengths"),
        "max_tpot_ratio": max_tpot_ratio, "long_input_words": long_input_words,
    }
    with open_cli_store() as store, progress_bars(not as_json):
        model = _model_or_url(store, target, url)
        dataset = resolve_input(data, store, kind="dataset")
        inputs = {"data": dataset, **({"model": model} if model is not None else {})}
        r = run_stage("validate", inputs, cfg, store=store, output_name=name, force=not reuse)
        report = load_report(r.artifact)
    emit({"digest": r.digest, "cached": r.cached, "path": str(r.artifact.path), "report": report}, as_json, show_validate)
    failed = [c["name"] for c in report["checks"] if c["status"] == "fail"]
    if failed:
        raise GateFailed(f"{len(failed)} validation item(s) failed: {', '.join(failed)}", fix="see the checklist above (or --json)")
