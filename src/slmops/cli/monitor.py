"""``slmops monitor``: drift of live traffic against a baseline dataset, and sampled judge scores of logged requests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from slmops import formats
from slmops.cli.common import JsonOpt, open_cli_store
from slmops.cli.flags import Flag, config_command, parse_duration
from slmops.cli.render import emit, out
from slmops.monitor.drift_run import DriftConfig
from slmops.monitor.sample import SampleConfig

app = typer.Typer(help="Watch served models: drift against the training data, sampled judge scores.", no_args_is_help=True)


_DRIFT = {"window_s": Flag("--window", cli_type=str, parse=parse_duration, unit="s", note="a duration: 30m, 1h, 1d")}


@config_command(app, "drift", config=DriftConfig, stage="monitor.drift", flags=_DRIFT, panel=None, only=("window_s", "min_live"),
                only_why="set from --model and --log-db; the embedding shift is added whenever the embedding extra is installed")
def drift(
    model: Annotated[str, typer.Option("--model", "-m", help="The served model (name, name:VERSION, name@ALIAS, sha256:…).")],
    baseline: Annotated[str, typer.Option("--baseline", "-b", help="Dataset the model was trained on (reference or file).")],
    log_db: Annotated[Path | None, typer.Option("--log-db", help="Request log file (default $SLMOPS_HOME/serve/requests.db).")] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Registry name for the report artifact.")] = None,
    as_json: JsonOpt = False,
    *,
    cfg: dict[str, Any],
) -> None:
    """Compare logged prompts (serve --log-content) in the window with the baseline's prompts: PSI of lengths and tokens."""
    from slmops.monitor.drift_run import run_drift
    from slmops.pipeline.inputs import resolve_input

    with open_cli_store() as store:
        art = resolve_input(model, store, kind=formats.runnable_kinds())
        base = resolve_input(baseline, store, kind="dataset")
        r = run_drift(art, base, store=store, log_path=log_db, name=name, **cfg)
    import json

    data = json.loads(r.artifact.file("drift.json").read_text())
    data["report"] = r.artifact.digest
    data["cached"] = r.cached
    emit(data, as_json, _print_drift)


def _print_drift(d: dict[str, Any]) -> None:
    colour = {"stable": "green", "moderate": "yellow", "significant": "red"}[d["verdict"]]
    out.print(f"drift: [bold {colour}]{d['verdict']}[/] (score {d['score']:.3f}; below 0.1 stable, above 0.25 significant)", markup=True)
    out.print(f"  length PSI {d['length_psi']:.3f}  token PSI {d['token_psi']:.3f}  "
              f"mean length {d['mean_length_baseline']:.1f} → {d['mean_length_live']:.1f} tokens")
    shift = d.get("embedding_shift")
    out.print(f"  embedding shift {shift:.3f}" if shift is not None else f"  embedding shift: {d.get('embedding')}")
    out.print(f"  {d['live_prompts']} live prompts vs {d['baseline_prompts']} baseline prompts; report sha256:{d['report'][:12]}")


_SAMPLE = {
    "judge_url": Flag("--judge"),
    "since_s": Flag("--since", cli_type=str, parse=parse_duration, unit="s", note="a duration: 30m, 1h, 1d"),
}


@config_command(app, "sample", config=SampleConfig, stage="monitor.sample", flags=_SAMPLE, panel=None,
                hidden={"log_path": "set from --log-db", "model_digest": "set from --model"})
def sample(
    model: Annotated[str, typer.Option("--model", "-m", help="The served model whose logged requests to re-score.")],
    log_db: Annotated[Path | None, typer.Option("--log-db", help="Request log file (default $SLMOPS_HOME/serve/requests.db).")] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Registry name for the quality report artifact.")] = None,
    as_json: JsonOpt = False,
    *,
    cfg: dict[str, Any],
) -> None:
    """Re-score a sampled share of logged requests (needs --log-content) with a judge; prints the running quality."""
    from slmops.monitor.sample import run_sample
    from slmops.pipeline.inputs import resolve_input

    with open_cli_store() as store:
        art = resolve_input(model, store, kind=formats.runnable_kinds())
        r = run_sample(art, store=store, log_path=log_db, name=name, **cfg)
    import json

    rep = {**json.loads(r.artifact.file("quality.json").read_text()), "report": r.artifact.digest, "cached": r.cached}
    emit(rep, as_json, lambda d: out.print(
        f"quality {d['quality'] if d['quality'] is None else round(d['quality'], 3)} over {d['scored']} scored requests "
        f"({d['newly_scored']} new of {d['logged']} logged); report sha256:{d['report'][:12]}"))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="monitor")
