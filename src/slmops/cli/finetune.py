"""``slmops finetune`` (train full/LoRA/DoRA/QLoRA) and ``slmops finetune search`` (optuna).

Every config field of :mod:`slmops.finetune.config` is a flag, generated from the pydantic models
(the field's description is the flag's help), so the CLI cannot drift from the library. Values
merge as: defaults < ``--config FILE.yaml`` < flags. The command only parses, calls
:func:`slmops.finetune.api.finetune` and renders.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from slmops.cli.common import JsonOpt, open_cli_store
from slmops.cli.flags import ConfigFlags, Flag, cli_type, default_of, help_text, option, parse_pairs, show, yaml_value
from slmops.cli.models import result_dict
from slmops.cli.render import emit, err, esc, out, progress_bars
from slmops.errors import ConfigError
from slmops.finetune.config import ALL_FIELDS, CONFIGS, METHODS, OPTION_FIELDS, RunOptions, flag, split_settings

app = typer.Typer(help="Fine-tune a model: full, LoRA, DoRA or QLoRA; `finetune search` tunes hyper-parameters.", no_args_is_help=True)

_PANELS = {
    "Data": ("text_template", "max_length", "packing", "train_split", "validation_split", "validation_fraction"),
    "Training": ("epochs", "max_steps", "batch_size", "grad_accum", "learning_rate", "lr_scheduler", "warmup_steps", "warmup_ratio",
                 "weight_decay", "max_grad_norm", "gradient_checkpointing", "mixed_precision", "seed"),
    "Evaluation": ("eval_every", "eval_batch_size", "early_stopping_patience", "early_stopping_min_delta", "restore_best",
                   "overfit_patience", "eval_generate", "eval_max_new_tokens"),
    "LoRA / DoRA / QLoRA": ("adapter_name", "lora_rank", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save",
                            "quant_type", "double_quant", "compute_dtype"),
    "Checkpoints and reporting": OPTION_FIELDS,
}
_PANEL_OF = {f: panel for panel, fields in _PANELS.items() for f in fields}


def _field_info(name: str) -> Any:
    for cls in (*CONFIGS.values(), RunOptions):
        if name in cls.model_fields:
            return cls.model_fields[name]
    raise KeyError(name)


def _per_method(name: str) -> str | None:
    """The default of a setting per method when the methods differ (learning rate), else None (the field's own)."""
    per = {m: default_of(c.model_fields[name]) for m, c in CONFIGS.items() if name in c.model_fields}
    if len({show(v) for v in per.values()}) < 2:
        return None
    return "; ".join(f"{show(v)} for {m}" for m, v in per.items())


def _option_params() -> list[inspect.Parameter]:
    params = []
    for name in (*ALL_FIELDS, *[f for f in OPTION_FIELDS if f != "resume"]):
        info = _field_info(name)
        typ = cli_type(info.annotation)[0]
        decl = f"{flag(name)}/--no-{name.replace('_', '-')}" if typ is bool else flag(name)
        help_ = help_text(info, Flag(default_text=_per_method(name)))
        params.append(option(name, typ | None, [decl], help_, panel=_PANEL_OF.get(name, "Other")))
    return params


def read_yaml(path: Path) -> dict[str, Any]:
    """A flat mapping from a YAML config file; keys may use dashes or underscores."""
    import yaml

    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path} is not valid YAML", why=str(exc).splitlines()[0]) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path} must hold a mapping of settings", fix="e.g.\n  method: lora\n  lora_rank: 16")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def merged_settings(config: Path | None, flags: dict[str, Any], method: str | None) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(method, config values, run options) from YAML and flags; flags win."""
    values = read_yaml(config) if config else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    m = method or values.pop("method", None) or "lora"
    values.pop("method", None)
    if m not in METHODS:
        raise ConfigError(f"--method {m} is not a fine-tuning method", fix=f"use one of {', '.join(METHODS)}")
    cfg, opts = split_settings(values)
    return m, cfg, opts


def _finetune(ctx: typer.Context, **kw: Any) -> None:
    if ctx.invoked_subcommand is not None:
        return
    from slmops.finetune.api import finetune

    model, data = kw.pop("model"), kw.pop("data")
    if not model or not data:
        raise ConfigError("finetune needs --model and --data", fix="e.g. slmops finetune --model tiny --data support --method lora")
    as_json, name, resume = kw.pop("as_json"), kw.pop("name"), kw.pop("resume")
    method, cfg, opts = merged_settings(kw.pop("config"), kw, kw.pop("method"))
    if resume is not None:
        opts["resume"] = "always" if resume else "never"
    with open_cli_store() as store, progress_bars(not as_json):
        r = finetune(model, data, method=method, config=cfg, options=opts, store=store, name=name)
    d = result_dict(r, name)
    d["curves"] = str(r.artifact.path / "training" / "curves.csv")
    emit(d, as_json, _print_finetune)


def _print_finetune(d: dict[str, Any]) -> None:
    state = "[dim]cached[/]" if d["cached"] else "[green]created[/]"
    label = d["name"] or f"sha256:{d['digest'][:12]}"
    out.print(f"{state} {d['kind']} [bold]{esc(label)}[/] ({d['stage']}) sha256:{d['digest'][:12]}", markup=True)
    m = d["metrics"]

    def num(v: Any, fmt: str = ".4f") -> str:
        return format(v, fmt) if isinstance(v, int | float) else "-"

    out.print(f"  steps: {m.get('steps')}/{m.get('total_steps')} ({m.get('stopped')}), epochs {num(m.get('epochs'), '.2f')}, "
              f"tokens {m.get('tokens')}, {num(m.get('train_tokens_per_s'), '.0f')} tokens/s over the whole run"
              + (f" ({num(m.get('segment_tokens_per_s'), '.0f')} in the resumed segment)" if m.get("segment_tokens_per_s") is not None else ""))
    out.print(f"  validation loss: {num(m.get('val_loss_start'))} → {num(m.get('val_loss'))} (best {num(m.get('best_val_loss'))} "
              f"at step {m.get('best_step')}); training loss {num(m.get('train_loss'))}")
    out.print(f"  trainable: {m.get('trainable_params')} of {m.get('total_params')} parameters ({num(m.get('trainable_pct'), '.3f')}%), "
              f"peak RSS {num(m.get('peak_rss_mb'), '.0f')} MiB")
    out.print(f"  examples: {m.get('train_examples')} train ({m.get('train_truncated')} truncated at --max-length {m.get('max_length')}), "
              f"{m.get('validation_examples')} validation")
    if m.get("overfit_step") is not None:
        out.print(f"  overfitting suspected from step {m['overfit_step']}", style="yellow")
    if m.get("resumed_from_step") is not None:
        out.print(f"  resumed from the checkpoint at step {m['resumed_from_step']}")
    out.print(f"  curves: {d['curves']}")


_FIXED = [
    ("ctx", typer.Context, None),
    ("model", str | None, typer.Option("--model", "-m", help="Base model: name, name:3, name@alias, sha256:…, ./folder or hf:org/name.")),
    ("data", str | None, typer.Option("--data", "-d", help="Dataset: a reference or a .jsonl/.json/.csv/.parquet file.")),
    ("method", str | None, typer.Option("--method", help="full, lora, dora or qlora (default: lora, or the YAML's method).")),
    ("config", Path | None, typer.Option("--config", "-c", help="YAML file of settings (field: value); flags win over it.")),
    ("name", str | None, typer.Option("--name", "-n", help="Registry name for the result (a new version each run).")),
    ("resume", bool | None, typer.Option("--resume/--no-resume", help="--resume: continue from the last checkpoint (error if none); "
                                         "--no-resume: start over. Default: continue when a checkpoint of this exact run exists.",
                                         rich_help_panel="Checkpoints and reporting")),
    ("as_json", bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")),
]


def _build_command() -> None:
    params = []
    for pname, typ, opt in _FIXED:
        ann = typ if opt is None else Annotated[typ, opt]
        default = inspect.Parameter.empty if opt is None else (False if typ is bool else None)
        params.append(inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=ann))
    params += _option_params()

    def finetune_cmd(**kw: Any) -> None:
        _finetune(**kw)

    finetune_cmd.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    finetune_cmd.config_flags = [  # type: ignore[attr-defined]  # what tests/cli/test_config_flags.py checks: one flag per field
        *(ConfigFlags(c, f"finetune.{m}", prefix="") for m, c in CONFIGS.items()), ConfigFlags(RunOptions, None, prefix="", hidden={"resume": "the tri-state --resume/--no-resume flag (unset: auto)"})]
    finetune_cmd.__annotations__ = {p.name: p.annotation for p in params}
    finetune_cmd.__doc__ = (
        "Fine-tune --model on --data with --method full|lora|dora|qlora. Every run is a cached stage: the same settings and "
        "inputs return the stored artifact; an interrupted run continues from its last checkpoint."
    )
    app.callback(invoke_without_command=True)(finetune_cmd)


_build_command()


def _parse_set(pairs: list[str] | None) -> dict[str, Any]:
    return parse_pairs(pairs, "--set", "max_steps=50", yaml_value, fields=True)


@app.command("search")
def search_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="Base model reference.")],
    data: Annotated[str, typer.Option("--data", "-d", help="Dataset reference or file.")],
    space: Annotated[Path, typer.Option("--space", help="YAML search space: field: {type: float|int|choice, low, high, log, choices}.")],
    method: Annotated[str | None, typer.Option("--method", help="full, lora, dora or qlora (default: lora).")] = None,
    trials: Annotated[int, typer.Option("--trials", help="Number of trials.")] = 10,
    strategy: Annotated[str, typer.Option("--strategy", help="random or tpe.")] = "tpe",
    objective: Annotated[str, typer.Option("--objective", help="val_loss, best_val_loss, val_token_accuracy or val_exact_match.")] = "val_loss",
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML of fixed settings for every trial.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="A fixed setting KEY=VALUE (repeatable; wins over --config).")] = None,
    name: Annotated[str, typer.Option("--name", "-n", help="Registry name given to the best run.")] = "finetune-search",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampler.")] = 0,
    save: Annotated[Path | None, typer.Option("--out", help="Also write the results table to this JSON file.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Search hyper-parameters with optuna; every trial is a cached fine-tune; the best is registered and tagged search-best."""
    from slmops.finetune.search import search

    m, cfg, opts = merged_settings(config, _parse_set(set_), method)
    with open_cli_store() as store, progress_bars(not as_json):
        res = search(model, data, method=m, space=space, trials=trials, strategy=strategy, objective=objective, config=cfg,
                     options=opts, store=store, name=name, seed=seed)
    if save is not None:
        import json

        save.write_text(json.dumps(res, indent=2, default=str) + "\n")
    emit(res, as_json, _print_search)


def _print_search(res: dict[str, Any]) -> None:
    keys = list(res["space"])
    t = Table(title=f"search {res['method']} ({res['strategy']}, {res['direction']} {res['objective']})")
    for col in ("trial", *keys, res["objective"], "state", "digest", ""):
        t.add_column(col)
    for r in res["trials"]:
        vals = [f"{r['params'].get(k):.4g}" if isinstance(r["params"].get(k), float) else str(r["params"].get(k)) for k in keys]
        value = f"{r['value']:.4f}" if r["value"] is not None else (r.get("error") or "-")[:40]
        t.add_row(str(r["trial"]), *vals, value, r["state"], (r["digest"] or "-")[:12], "best" if r.get("best") else "")
    out.print(t)
    b = res["best"]
    err.print(f"best: trial {b['trial']} → {b['name']} (tag {b['tag']}) sha256:{b['digest'][:12]}")
