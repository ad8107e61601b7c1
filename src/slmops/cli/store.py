"""``slmops store remote add|ls|rm``, ``slmops push`` and ``slmops pull``: artifacts to and from an S3-compatible remote."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from slmops.cli.common import JsonOpt, open_cli_store
from slmops.cli.render import emit, human_bytes, out, progress_bars

app = typer.Typer(help="The store itself: object-store remotes to push artifacts to and pull them from.", no_args_is_help=True)
remote_app = typer.Typer(help="Object-store remotes (s3://bucket/prefix); credentials come from the environment, never the store.",
                         no_args_is_help=True)
app.add_typer(remote_app, name="remote")

RemoteOpt = Annotated[str | None, typer.Option("--remote", help="Remote name (default: the default remote).")]


@remote_app.command("add")
def remote_add(
    name: Annotated[str, typer.Argument(help="Remote name, e.g. team.")],
    url: Annotated[str, typer.Argument(help="s3://BUCKET/PREFIX")],
    endpoint_url: Annotated[str | None, typer.Option("--endpoint-url", help="S3-compatible endpoint (MinIO, Ceph, R2…); default AWS.")] = None,
    region: Annotated[str | None, typer.Option("--region", help="Region (default from the AWS configuration).")] = None,
    default: Annotated[bool, typer.Option("--default", help="Make it the default remote (the first one is).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Add or replace a remote. Credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE in the environment."""
    from slmops.store.remotes import add_remote

    with open_cli_store() as store:
        spec = add_remote(store, name, url, endpoint_url=endpoint_url, region=region, default=default)
    emit(spec.to_dict(), as_json, lambda d: out.print(f"remote {d['name']} -> {d['url']}" + (f" at {d['endpoint_url']}" if d["endpoint_url"] else "")
                                                       + (" (default)" if d["default"] else "")))


@remote_app.command("ls")
def remote_ls(as_json: JsonOpt = False) -> None:
    """List the remotes of this store."""
    from slmops.store.remotes import list_remotes

    with open_cli_store() as store:
        rows = [r.to_dict() for r in list_remotes(store)]

    def show(rows: list[dict[str, Any]]) -> None:
        t = Table()
        for col in ("name", "url", "endpoint", "default"):
            t.add_column(col)
        for r in rows:
            t.add_row(r["name"], r["url"], r["endpoint_url"] or "-", "yes" if r["default"] else "")
        out.print(t)

    emit(rows, as_json, show)


@remote_app.command("rm")
def remote_rm(name: Annotated[str, typer.Argument(help="Remote name.")], as_json: JsonOpt = False) -> None:
    """Forget a remote (nothing on the remote is deleted)."""
    from slmops.errors import StoreError
    from slmops.store.remotes import remove_remote

    with open_cli_store() as store:
        if not remove_remote(store, name):
            raise StoreError(f"no remote {name!r}", fix="list them with `slmops store remote ls`")
    emit({"removed": name}, as_json, lambda d: out.print(f"removed remote {d['removed']}"))


def _show_transfer(d: dict[str, Any]) -> None:
    verb = "uploaded" if d["direction"] == "push" else "downloaded"
    out.print(f"{d['direction']} {d['ref']} (sha256:{d['digest'][:12]}) {'to' if d['direction'] == 'push' else 'from'} {d['remote']}: "
              f"{len(d['transferred'])} of {len(d['artifacts'])} artifact(s) {verb}, {human_bytes(d['bytes_transferred'])} moved"
              + (f", {human_bytes(d['bytes_verified'])} verified" if d["direction"] == "pull" else ""))
    if d["names"]:
        out.print("names: " + ", ".join(d["names"]))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="store")

    for direction, ref_help, doc in (
        ("push", "What to push: name, name:3, name@prod or sha256:PREFIX (its ancestors go too).",
         "Upload an artifact and all its ancestors by digest; what the remote has is skipped, so re-runs resume."),
        ("pull", "What to pull: name, name:3, name@prod or sha256:PREFIX as the remote knows it.",
         "Download an artifact and its ancestors, verifying every byte's sha256; names and aliases come along."),
    ):
        root.command(direction)(_transfer_command(direction, ref_help, doc))


def _transfer_command(direction: str, ref_help: str, doc: str) -> Any:
    """``slmops push`` or ``slmops pull``: the same options, the other direction."""

    def transfer(ref: str, remote: str | None = None, as_json: bool = False) -> None:
        from slmops.store import sync

        with open_cli_store() as store, progress_bars(not as_json):
            report = getattr(sync, direction)(store, ref, remote=remote)
        emit(report.to_dict(), as_json, _show_transfer)

    transfer.__name__, transfer.__doc__ = f"{direction}_", doc
    transfer.__annotations__ = {"ref": Annotated[str, typer.Argument(help=ref_help)], "remote": RemoteOpt, "as_json": JsonOpt, "return": None}
    return transfer
