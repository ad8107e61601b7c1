"""``slmops adapters``: list the adapters of a base, merge one into it, combine several into a new one."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from slmops.cli.common import JsonOpt, open_cli_store
from slmops.cli.models import print_result, result_dict
from slmops.cli.render import emit, err, out, progress_bars
from slmops.errors import ConfigError
from slmops.stage.inputs import resolve_input

app = typer.Typer(help="Adapters of a base model: list, merge into the base, combine several.", no_args_is_help=True)
BaseArg = Annotated[str, typer.Argument(help="The base model (name, name:3, name@alias, sha256:…, ./folder).")]
NameOpt = Annotated[str | None, typer.Option("--name", "-n", help="Registry name for the result.")]
OtherBase = Annotated[bool, typer.Option("--allow-other-base", help="Accept adapters trained on a different base artifact.")]


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


@app.command()
def merge(
    base: BaseArg,
    adapter: Annotated[str, typer.Argument(help="Adapter name on BASE (see `adapters ls`), or an adapter reference.")],
    name: NameOpt = None,
    dtype: Annotated[str, typer.Option("--dtype", help="Saved dtype: float32, bfloat16 or float16.")] = "float32",
    allow_other_base: OtherBase = False,
    as_json: JsonOpt = False,
) -> None:
    """Merge ADAPTER into BASE → a new model artifact (its logits match base + adapter)."""
    from slmops.finetune.api import merge as merge_fn

    with open_cli_store() as store, progress_bars(not as_json):
        r = merge_fn(base, adapter, store=store, name=name, dtype=dtype, allow_other_base=allow_other_base)
    emit(result_dict(r, name), as_json, print_result)


def _weights(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ConfigError(f"--weights {text!r} is not a list of numbers", fix="e.g. --weights 0.7,0.3") from exc


@app.command()
def combine(
    base: BaseArg,
    adapters: Annotated[list[str], typer.Argument(help="Two or more adapter names on BASE (or adapter references).")],
    weights: Annotated[str, typer.Option("--weights", "-w", help="One weight per adapter, comma-separated, e.g. 0.7,0.3.")],
    method: Annotated[str, typer.Option("--method", help="linear (same rank), cat (exact weighted sum) or svd (re-factored).")] = "linear",
    svd_rank: Annotated[int | None, typer.Option("--svd-rank", help="Rank of the result for --method svd.")] = None,
    adapter_name: Annotated[str, typer.Option("--adapter-name", help="Name of the new adapter on BASE.")] = "combined",
    name: NameOpt = None,
    allow_other_base: OtherBase = False,
    as_json: JsonOpt = False,
) -> None:
    """Combine adapters of BASE with weights → a new adapter (a standard PEFT folder)."""
    from slmops.finetune.api import combine as combine_fn

    if method not in ("linear", "cat", "svd"):
        raise ConfigError(f"--method {method} is not a combination method", fix="use linear, cat or svd")
    with open_cli_store() as store, progress_bars(not as_json):
        r = combine_fn(base, adapters, weights=_weights(weights), method=method, svd_rank=svd_rank, adapter_name=adapter_name,
                       store=store, name=name, allow_other_base=allow_other_base)
    emit(result_dict(r, name), as_json, print_result)
