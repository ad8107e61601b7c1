"""``slmops eval``, ``bench``, ``compare`` and ``validate``: quality, speed, side-by-side reports and pre-ship checks.

Thin: each verb parses flags into the stage's config, runs the stage through the cached runner
(local results are cached; anything measured — a benchmark, a URL, a validation — is re-run unless
``--reuse``), renders the report, and exits 3 when a quality gate or a validation item fails.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any

import typer

from slmops.bench.config import BenchConfig
from slmops.cli.common import JsonOpt, ReportNameOpt, open_cli_store
from slmops.cli.evaluate_render import show_bench, show_compare, show_eval, show_validate
from slmops.cli.flags import ConfigFlags, Flag, config_command, parse_duration, read_json_file
from slmops.cli.render import emit, err, progress_bars
from slmops.errors import ConfigError
from slmops.evaluate.config import EvalConfig
from slmops.evaluate.validate import ValidateConfig
from slmops.report.stages import CompareConfig

Target = Annotated[str | None, typer.Argument(help="Model or adapter reference (name, name:3, name@prod, sha256:…, ./folder); "
                                                   "an adapter runs on its recorded base; omit with --url.")]
Data = Annotated[str, typer.Option("--data", "-d", help="Dataset reference or file (.jsonl, .csv …).")]
Reuse = Annotated[bool, typer.Option("--reuse", help="Reuse a stored result for the same inputs and config instead of measuring again.")]
Force = Annotated[bool, typer.Option("--force", help="Re-run even when a cached result exists.")]


def _slos(texts: list[str], flag: str) -> dict[str, float]:
    from slmops.bench.stats import parse_slos

    return parse_slos(texts)


#: Flags that read the same way on eval, bench, validate and compare.
SHARED_FLAGS = {
    "metrics": Flag("--metrics", "-m"),
    "json_schema": Flag("--schema", cli_type=Path, parse=read_json_file, note="a JSON Schema file"),
    "judge_rubric": Flag("--judge-rubric", cli_type=Path, parse=read_json_file, note="a YAML/JSON file"),
    "stop": Flag("--stop", multiple=True),
    "ray_address": Flag("--address"),
    "request_timeout_s": Flag("--request-timeout", cli_type=str, parse=parse_duration, unit="s", note="a duration: 90s, 2m"),
    "max_duration_s": Flag("--max-duration", cli_type=str, parse=parse_duration, unit="s", note="a duration: 300s, 5m"),
    "repetitions": Flag("--repetitions", "-r"),
    "concurrency": Flag("--concurrency", "-c"),
    "isolate": Flag("--isolate/--no-isolate"),
    "slo": Flag("--slo", multiple=True, cli_type=list[str], parse=_slos, note="repeatable: ttft=500ms, tpot=50ms, e2e=2s"),
}


def _model_or_url(store: Any, target: str | None, url: str | None) -> Any:
    from slmops.pipeline.inputs import resolve_input

    if (target is None) == (url is None):
        raise ConfigError("give a TARGET or --url (one of them)", fix="slmops eval bot@prod --data d, or slmops eval --url http://127.0.0.1:8000/v1 --data d")
    from slmops import formats

    return resolve_input(target, store, kind=formats.runnable_kinds()) if target else None


def register(app: typer.Typer) -> None:
    config_command(app, "eval", config=EvalConfig, stage="eval", flags=SHARED_FLAGS)(eval_cmd)
    config_command(app, "bench", config=BenchConfig, stage="bench", flags=SHARED_FLAGS)(bench_cmd)
    config_command(app, "compare", config=CompareConfig, stage="compare", only=("title",), only_why="set from the TARGETS and --ref",
                   more={"eval_cfg": ConfigFlags(EvalConfig, "eval", SHARED_FLAGS, prefix="eval__", panel="Quality (eval)",
                                                 only=("metrics", "split", "limit", "max_tokens", "json_schema"),
                                                 only_why="compare runs eval with these settings only (use slmops eval for the rest)"),
                         "bench_cfg": ConfigFlags(BenchConfig, "bench", SHARED_FLAGS, prefix="bench__", panel="Speed (bench)",
                                                  only=("prompt_tokens", "output_tokens", "repetitions", "isolate"),
                                                  only_why="compare benchmarks locally with these settings only (use slmops bench for the rest)")},
                   )(compare_cmd)
    config_command(app, "validate", config=ValidateConfig, stage="validate", flags=SHARED_FLAGS)(validate_cmd)


def eval_cmd(
    target: Target = None,
    data: Data = ...,  # type: ignore[assignment]
    gate: Annotated[list[str] | None, typer.Option("--gate", help='Quality gate (repeatable): "exact_match>=0.9", "accuracy>=0.95*ref". '
                                                   "Exit code 3 when one fails.")] = None,
    ref: Annotated[str | None, typer.Option("--ref", help="Reference model (or eval report) for retention and *ref gates.")] = None,
    samples_out: Annotated[Path | None, typer.Option("--samples-out", help="Also copy samples.jsonl here (implies --log-samples).")] = None,
    name: ReportNameOpt = None, force: Force = False, reuse: Reuse = False, as_json: JsonOpt = False,
    *,
    cfg: dict[str, Any],
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
    wanted = list(cfg.get("metrics") or EvalConfig.model_fields["metrics"].get_default(call_default_factory=True))
    for m in gate_metrics(gates):  # a gate's metric is computed even when --metrics forgot it
        base = "judge" if m.startswith("judge_") else m
        if base not in wanted:
            wanted.append(base)
    cfg["metrics"] = wanted
    if samples_out is not None:
        cfg["log_samples"] = True
    url = cfg.get("url")
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


def bench_cmd(target: Target = None, name: ReportNameOpt = None, reuse: Reuse = False, as_json: JsonOpt = False, *, cfg: dict[str, Any]) -> None:
    """Measure speed: TTFT, TPOT, ITL, latency p50/p95/p99, tokens/s, peak RSS, load time, size (local grid or HTTP load)."""
    from slmops.evaluate.report import load_report
    from slmops.stage.runner import run_stage

    with open_cli_store() as store, progress_bars(not as_json):
        model = _model_or_url(store, target, cfg.get("url"))
        r = run_stage("bench", {"model": model} if model is not None else {}, cfg, store=store, output_name=name, force=not reuse)
        report = load_report(r.artifact)
    emit({"digest": r.digest, "cached": r.cached, "path": str(r.artifact.path), "headline": r.artifact.manifest.metrics, "report": report},
         as_json, show_bench)


def compare_cmd(
    targets: Annotated[list[str], typer.Argument(help="Two or more model references.")],
    data: Data = ...,  # type: ignore[assignment]
    ref: Annotated[str | None, typer.Option("--ref", help="Reference model for retention (default: the first).")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Write the HTML report (plots embedded) here.")] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="Write the Markdown report here (plots beside it).")] = None,
    report_json: Annotated[Path | None, typer.Option("--report-json", help="Write the JSON report here.")] = None,
    name: ReportNameOpt = None, force: Force = False, as_json: JsonOpt = False,
    *,
    cfg: dict[str, Any], eval_cfg: dict[str, Any], bench_cfg: dict[str, Any],
) -> None:
    """Compare models side by side: size, memory, speed, quality and retention vs a reference; HTML/Markdown/JSON report."""
    from slmops.evaluate.report import load_report
    from slmops.report.compare import compare

    with open_cli_store() as store, progress_bars(not as_json):
        r = compare(targets, data, store=store, ref=ref, eval_config=eval_cfg, bench_config=bench_cfg, force=force, name=name, **cfg)
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
    name: ReportNameOpt = None, reuse: Reuse = False, as_json: JsonOpt = False,
    *,
    cfg: dict[str, Any],
) -> None:
    """Run the pre-shipping checklist: domain answers, output format, memory growth, latency, edge cases (exit 3 on a fail)."""
    from slmops.evaluate.gates import GateFailed
    from slmops.evaluate.report import load_report
    from slmops.pipeline.inputs import resolve_input
    from slmops.stage.runner import run_stage

    url = cfg.get("url")
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
