"""``slmops data``: import, synth, inspect, split and dedup datasets (all through the stage runner)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from slmops import formats
from slmops.cli.common import JsonOpt, open_cli_store
from slmops.cli.models import print_result, result_dict
from slmops.cli.render import emit, out, progress_bars
from slmops.errors import ConfigError
from slmops.pipeline.inputs import resolve_input
from slmops.stage.runner import run_stage

app = typer.Typer(help="Datasets: import files, generate built-in tasks, inspect, split and deduplicate.", no_args_is_help=True)
NameOpt = Annotated[str | None, typer.Option("--name", "-n", help="Registry name for the resulting dataset.")]


def _field_map(pairs: list[str] | None) -> dict[str, str]:
    result = {}
    for pair in pairs or []:
        src, sep, dst = pair.partition("=")
        if not sep or not src or not dst:
            raise ConfigError(f"--field-map {pair!r} is not SOURCE=TARGET", fix="e.g. --field-map question=input")
        result[src] = dst
    return result


@app.command("import")
def import_(
    path: Annotated[str, typer.Argument(help="A .jsonl, .json, .csv or .parquet file.")],
    name: NameOpt = None,
    format_: Annotated[str, typer.Option("--format", help="auto, jsonl, json, csv or parquet.")] = "auto",
    kind: Annotated[str | None, typer.Option("--kind", help="Force a record kind: chat, instruction, prompt or text.")] = None,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Leave invalid records out (counted and reported) instead of failing.")] = False,
    field_map: Annotated[list[str] | None, typer.Option("--field-map", help="Rename a field: SOURCE=TARGET (repeatable).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate and import a data file as a dataset artifact; bad records are reported with their line numbers."""
    cfg: dict[str, Any] = {"path": path, "format": format_, "kind": kind, "skip_invalid": skip_invalid, "field_map": _field_map(field_map)}
    with open_cli_store() as store, progress_bars(not as_json):
        r = run_stage("data.import", {}, cfg, store=store, output_name=name)
    emit(result_dict(r, name), as_json, print_result)


@app.command()
def synth(
    task: Annotated[str, typer.Argument(help="support-intent, extract-json or arithmetic.")] = "support-intent",
    name: NameOpt = None,
    n: Annotated[int, typer.Option("--n", help="Number of records (all splits).")] = 600,
    seed: Annotated[int, typer.Option("--seed", help="Seed.")] = 0,
    prompts_only: Annotated[bool, typer.Option("--prompts-only", help="Only prompts (for a teacher to answer).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Generate a built-in task with train/validation/test splits (test uses held-out phrasings)."""
    with open_cli_store() as store:
        r = run_stage("data.synth", {}, {"task": task, "n": n, "seed": seed, "prompts_only": prompts_only}, store=store, output_name=name)
    emit(result_dict(r, name), as_json, print_result)


@app.command()
def split(
    data: Annotated[str, typer.Argument(help="Dataset reference or file.")],
    name: NameOpt = None,
    ratios: Annotated[str, typer.Option("--ratios", help="train,validation,test shares summing to 1.")] = "0.8,0.1,0.1",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the deterministic shuffle.")] = 0,
    stratify_by: Annotated[str | None, typer.Option("--stratify-by", help="Keep this field's (e.g. label) proportions in every split.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Split a dataset deterministically into train/validation/test."""
    try:
        train, validation, test = (float(x) for x in ratios.split(","))
    except ValueError as exc:
        raise ConfigError(f"--ratios {ratios!r} is not three numbers", fix="e.g. --ratios 0.8,0.1,0.1") from exc
    with open_cli_store() as store:
        src = resolve_input(data, store, kind="dataset")
        cfg = {"train": train, "validation": validation, "test": test, "seed": seed, "stratify_by": stratify_by}
        r = run_stage("data.split", {"data": src}, cfg, store=store, output_name=name)
    emit(result_dict(r, name), as_json, print_result)


@app.command()
def dedup(
    data: Annotated[str, typer.Argument(help="Dataset reference or file.")],
    name: NameOpt = None,
    threshold: Annotated[float, typer.Option("--threshold", help="Jaccard similarity from which records are near duplicates.")] = 0.85,
    no_near: Annotated[bool, typer.Option("--exact-only", help="Only remove exact duplicates.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove exact and near duplicates (MinHash + LSH), across splits; the report says what was removed and why."""
    with open_cli_store() as store, progress_bars(not as_json):
        src = resolve_input(data, store, kind="dataset")
        r = run_stage("data.dedup", {"data": src}, {"threshold": threshold, "near": not no_near}, store=store, output_name=name)
    emit(result_dict(r, name), as_json, print_result)


@app.command()
def inspect(data: Annotated[str, typer.Argument(help="Dataset reference or file.")], as_json: JsonOpt = False) -> None:
    """Counts per kind, label and split, and length statistics."""
    from slmops.data.inspect import inspect_dataset
    from slmops.data.io import dataset_splits, read_dataset

    with open_cli_store() as store:
        src = resolve_input(data, store, kind="dataset")
        splits = dataset_splits(src)
        records = {s: read_dataset(src, s) for s in splits} if splits else read_dataset(src)
        stats = inspect_dataset(records)
    emit(stats, as_json, _print_stats)


def _print_stats(stats: dict[str, Any]) -> None:
    t = Table(show_header=False, title="dataset")
    for key, value in stats.items():
        if key == "splits" and isinstance(value, dict):
            for split, s in value.items():
                t.add_row(f"split {split}", str(s.get("records", s)))
        else:
            t.add_row(key, str(value))
    out.print(t)


@app.command("from-logs")
def from_logs(
    model: Annotated[str, typer.Option("--model", "-m", help="The served model (name, name:VERSION, name@ALIAS, sha256:…) whose traffic to take.")],
    name: NameOpt = None,
    since: Annotated[str | None, typer.Option("--since", help="Only requests newer than this (e.g. 15m, 1h, 2d).")] = None,
    min_judge_score: Annotated[float | None, typer.Option("--min-judge-score", help="Only requests a judge scored at least this (slmops monitor sample).")] = None,
    scrub: Annotated[list[str] | None, typer.Option("--scrub", help="Extra regex to redact (repeatable); emails, phones and card numbers always are.")] = None,
    log_db: Annotated[str | None, typer.Option("--log-db", help="Request log file (default $SLMOPS_HOME/serve/requests.db).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Turn logged traffic (served with --log-content) into a scrubbed prompt dataset whose parent is the model."""
    from pathlib import Path

    from slmops.monitor.fromlogs import build_from_logs
    from slmops.units import parse_duration

    since_s = parse_duration(since, flag="--since") if since else None
    with open_cli_store() as store:
        art = resolve_input(model, store, kind=formats.runnable_kinds())
        r = build_from_logs(art, store=store, log_path=Path(log_db) if log_db else None, since_s=since_s,
                            min_judge_score=min_judge_score, scrub=scrub, name=name)
    emit(result_dict(r, name), as_json, print_result)
