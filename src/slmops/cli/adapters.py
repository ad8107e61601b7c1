"""``slmops adapters``: list the adapters of a base, merge one into it, combine several into a new one."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from slmops.cli.common import JsonOpt, ResultNameOpt, open_cli_store
from slmops.cli.flags import Flag, config_command, split_csv
from slmops.cli.models import print_result, result_dict
from slmops.cli.render import emit, err, out, progress_bars
from slmops.errors import ConfigError
from slmops.finetune.adapter_stages import CombineConfig, MergeConfig
from slmops.pipeline.inputs import resolve_input

app = typer.Typer(help="Adapters of a base model: list, merge into the base, combine several.", no_args_is_help=True)
BaseArg = Annotated[str, typer.Argument(help="The base model (name, name:3, name@alias, sha256:…, ./folder).")]


@app.command("ls")
def ls(base: BaseArg, as_json: JsonOpt = False) -> None:
    """List the adapters trained on (or combined for) BASE."""
    from slmops.finetune.adapters import list_adapters

    with open_cli_store() as store:
        art = resolve_input(base, store, kind="model")
        rows = list_adapters(store, art)
    emit(rows, as_json, lambda r: _print_ls(r, base))


def _print_ls(rows: list[dict[str, Any]], base: str) -> None:
    if not rows:
        err.print(f"no adapters on {base} yet (train one with `slmops finetune --model {base} --data DATA --method lora`)")
        return
    t = Table()
    for col in ("adapter", "method", "rank", "val loss", "names", "tags", "digest", "created"):
        t.add_column(col)
    for r in rows:
        vl = f"{r['val_loss']:.4f}" if isinstance(r["val_loss"], float) else "-"
        t.add_row(r["adapter_name"], r["method"] or "-", str(r["rank"]), vl, ", ".join(r["names"]) or "-", ", ".join(r["tags"]) or "-",
                  r["digest"][:12], r["created_at"])
    out.print(t)


def _run(action: str, base: str, adapters: str | list[str], name: str | None, as_json: bool, cfg: dict[str, Any]) -> None:
    """``finetune.api.merge`` or ``combine`` on BASE, printed."""
    from slmops.finetune import api

    with open_cli_store() as store, progress_bars(not as_json):
        r = getattr(api, action)(base, adapters, store=store, name=name, **cfg)
    emit(result_dict(r, name), as_json, print_result)


@config_command(app, "merge", config=MergeConfig, stage="adapters.merge", panel=None)
def merge(
    base: BaseArg,
    adapter: Annotated[str, typer.Argument(help="Adapter name on BASE (see `adapters ls`), or an adapter reference.")],
    name: ResultNameOpt = None, as_json: JsonOpt = False,
    *,
    cfg: dict[str, Any],
) -> None:
    """Merge ADAPTER into BASE → a new model artifact (its logits match base + adapter)."""
    _run("merge", base, adapter, name, as_json, cfg)


def _weights(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in split_csv(text)]
    except ValueError as exc:
        raise ConfigError(f"{flag} {text!r} is not a list of numbers", fix=f"e.g. {flag} 0.7,0.3") from exc


@config_command(app, "combine", config=CombineConfig, stage="adapters.combine", panel=None, flags={"weights": Flag("--weights", "-w", parse=_weights)})
def combine(
    base: BaseArg,
    adapters: Annotated[list[str], typer.Argument(help="Two or more adapter names on BASE (or adapter references).")],
    name: ResultNameOpt = None, as_json: JsonOpt = False,
    *,
    cfg: dict[str, Any],
) -> None:
    """Combine adapters of BASE with weights → a new adapter (a standard PEFT folder)."""
    _run("combine", base, adapters, name, as_json, cfg)
