"""``slmops data``: import, synth, inspect, split and dedup datasets (all through the stage runner)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from slmops import formats
from slmops.cli.common import JsonOpt, open_cli_store
from slmops.cli.flags import Flag, config_command, parse_duration, parse_pairs
from slmops.cli.models import print_result, result_dict
from slmops.cli.render import emit, out, progress_bars
from slmops.data.stages import DedupConfig, ImportConfig, SplitConfig
from slmops.data.synth.stage import SynthConfig
from slmops.errors import ConfigError
from slmops.monitor.fromlogs import FromLogsConfig
from slmops.pipeline.inputs import resolve_input
from slmops.stage.runner import run_stage

app = typer.Typer(help="Datasets: import files, generate built-in tasks, inspect, split and deduplicate.", no_args_is_help=True)
NameOpt = Annotated[str | None, typer.Option("--name", "-n", help="Registry name for the resulting dataset.")]
DataArg = Annotated[str, typer.Argument(help="Dataset reference or file.")]


def _run(stage: str, inputs: dict[str, Any], cfg: dict[str, Any], name: str | None, as_json: bool) -> None:
    """Run a data stage and print its result (every ``data`` verb that makes a dataset ends here)."""
    with open_cli_store() as store, progress_bars(not as_json):
        r = run_stage(stage, {role: resolve_input(ref, store, kind="dataset") for role, ref in inputs.items()}, cfg, store=store, output_name=name)
    emit(result_dict(r, name), as_json, print_result)


_FIELD_MAP = Flag("--field-map", multiple=True, cli_type=list[str], note="SOURCE=TARGET, repeatable",
                  parse=lambda v, flag: parse_pairs(v, flag, "question=input", form="SOURCE=TARGET"))


@config_command(app, "import", config=ImportConfig, stage="data.import", flags={"field_map": _FIELD_MAP}, panel=None,
                hidden={"path": "the PATH argument"})
def import_(
    path: Annotated[str, typer.Argument(help="A .jsonl, .json, .csv or .parquet file.")],
    name: NameOpt = None,
    as_json: JsonOpt = False,
    *,
    cfg: dict[str, Any],
) -> None:
    """Validate and import a data file as a dataset artifact; bad records are reported with their line numbers."""
    _run("data.import", {}, {"path": path, **cfg}, name, as_json)


@config_command(app, "synth", config=SynthConfig, stage="data.synth", panel=None, hidden={"task": "the TASK argument"})
def synth(
    task: Annotated[str, typer.Argument(help=SynthConfig.model_fields["task"].description)] = "support-intent",
    name: NameOpt = None,
    as_json: JsonOpt = False,
    *,
    cfg: dict[str, Any],
) -> None:
    """Generate a built-in task with train/validation/test splits (test uses held-out phrasings)."""
    _run("data.synth", {}, {"task": task, **cfg}, name, as_json)


def _ratios(text: str) -> dict[str, float]:
    try:
        train, validation, test = (float(x) for x in text.split(","))
    except ValueError as exc:
        raise ConfigError(f"--ratios {text!r} is not three numbers", fix="e.g. --ratios 0.8,0.1,0.1") from exc
    return {"train": train, "validation": validation, "test": test}


_RATIOS = "--ratios TRAIN,VALIDATION,TEST sets the three shares at once"


@config_command(app, "split", config=SplitConfig, stage="data.split", panel=None,
                hidden={"train": _RATIOS, "validation": _RATIOS, "test": _RATIOS})
def split(
    data: DataArg,
    name: NameOpt = None,
    ratios: Annotated[str | None, typer.Option("--ratios", help="train,validation,test shares summing to 1 (default: 0.8,0.1,0.1).")] = None,
    as_json: JsonOpt = False,
    *,
    cfg: dict[str, Any],
) -> None:
    """Split a dataset deterministically into train/validation/test."""
    _run("data.split", {"data": data}, {**(_ratios(ratios) if ratios else {}), **cfg}, name, as_json)


@config_command(app, "dedup", config=DedupConfig, stage="data.dedup", panel=None, flags={"near": Flag("--near/--exact-only")})
def dedup(
    data: DataArg,
    name: NameOpt = None,
    as_json: JsonOpt = False,
    *,
    cfg: dict[str, Any],
) -> None:
    """Remove exact and near duplicates (MinHash + LSH), across splits; the report says what was removed and why."""
    _run("data.dedup", {"data": data}, cfg, name, as_json)


@app.command()
def inspect(data: DataArg, as_json: JsonOpt = False) -> None:
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


_FROM_LOGS = {"since_s": Flag("--since", cli_type=str, parse=parse_duration, note="a duration: 15m, 1h, 2d"),
              "scrub": Flag("--scrub", multiple=True, note="repeatable; emails, phones and card numbers always are")}


@config_command(app, "from-logs", config=FromLogsConfig, stage="data.from_logs", flags=_FROM_LOGS, panel=None,
                only=("since_s", "min_judge_score", "scrub"), only_why="set from --model and --log-db; built-in scrubbing and dedup always apply here")
def from_logs(
    model: Annotated[str, typer.Option("--model", "-m", help="The served model (name, name:VERSION, name@ALIAS, sha256:…) whose traffic to take.")],
    name: NameOpt = None,
    log_db: Annotated[str | None, typer.Option("--log-db", help="Request log file (default $SLMOPS_HOME/serve/requests.db).")] = None,
    as_json: JsonOpt = False,
    *,
    cfg: dict[str, Any],
) -> None:
    """Turn logged traffic (served with --log-content) into a scrubbed prompt dataset whose parent is the model."""
    from pathlib import Path

    from slmops.monitor.fromlogs import build_from_logs

    with open_cli_store() as store:
        art = resolve_input(model, store, kind=formats.runnable_kinds())
        r = build_from_logs(art, store=store, log_path=Path(log_db) if log_db else None, name=name, **cfg)
    emit(result_dict(r, name), as_json, print_result)
