"""``slmops profile``: detect this machine and keep named device profiles for optimize and bundles."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from slmops.cli.common import JsonOpt, open_cli_store
from slmops.cli.flags import Flag, config_command
from slmops.cli.render import emit, human_bytes, out
from slmops.deploy.profiles import DeviceProfile
from slmops.units import parse_size

app = typer.Typer(help="Device profiles: the limits of a class of target machines.", no_args_is_help=True)


def _show(p: dict[str, Any]) -> None:
    t = Table(show_header=False, title=f"profile {p['name']}")
    t.add_row("max RSS", human_bytes(p["max_rss_bytes"]))
    t.add_row("max size", human_bytes(p["max_size_bytes"]))
    t.add_row("min tokens/s", str(p["min_tokens_per_s"] or "-"))
    t.add_row("formats", ", ".join(p["formats"]))
    if p["machine"]:
        m = p["machine"]
        t.add_row("machine", f"{m.get('cores')} cores, {human_bytes(m.get('memory_bytes'))}, {', '.join(m.get('cpu', {}).get('features', []))}")
    out.print(t)


@app.command()
def detect(
    name: Annotated[str, typer.Option("--name", help="Name to save it under.")] = "this-machine",
    save: Annotated[bool, typer.Option("--save", help="Save it in the store.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Record this machine (cores, RAM, CPU features, accelerators) as a profile."""
    from slmops.deploy.profiles import detect_profile, save_profile

    prof = detect_profile(name)
    if save:
        with open_cli_store() as store:
            save_profile(store, prof)
    emit(prof.model_dump(), as_json, _show)


def _size(text: str, flag: str) -> int:
    return parse_size(text, flag=flag)


_CREATE = {"max_rss_bytes": Flag("--max-rss", cli_type=str, parse=_size, note="e.g. 2GB"),
           "max_size_bytes": Flag("--max-size", cli_type=str, parse=_size, note="e.g. 500MB")}


@config_command(app, "create", config=DeviceProfile, flags=_CREATE, panel=None,
                hidden={"name": "the NAME argument", "machine": "recorded by `slmops profile detect`, not typed in"})
def create(
    name: Annotated[str, typer.Argument(help="Profile name.")],
    as_json: JsonOpt = False,
    *,
    cfg: dict[str, Any],
) -> None:
    """Create or replace a named device profile."""
    from slmops.deploy.profiles import save_profile

    prof = DeviceProfile(name=name, **cfg)
    with open_cli_store() as store:
        save_profile(store, prof)
    emit(prof.model_dump(), as_json, _show)


@app.command("ls")
def ls(as_json: JsonOpt = False) -> None:
    """List saved profiles."""
    from slmops.deploy.profiles import list_profiles

    with open_cli_store() as store:
        rows = [p.model_dump() for p in list_profiles(store)]
    emit(rows, as_json, lambda rs: [_show(r) for r in rs] or out.print("no profiles yet"))


@app.command()
def show(name: Annotated[str, typer.Argument(help="Profile name.")], as_json: JsonOpt = False) -> None:
    """Show one profile."""
    from slmops.deploy.profiles import load_profile

    with open_cli_store() as store:
        prof = load_profile(store, name)
    emit(prof.model_dump(), as_json, _show)


@app.command()
def rm(name: Annotated[str, typer.Argument(help="Profile name.")], as_json: JsonOpt = False) -> None:
    """Remove a profile."""
    from slmops.deploy.profiles import remove_profile

    with open_cli_store() as store:
        ok = remove_profile(store, name)
    emit({"removed": ok}, as_json, lambda d: out.print("removed" if ok else f"no profile {name}"))
