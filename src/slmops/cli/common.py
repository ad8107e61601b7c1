"""Options and helpers shared by the CLI verbs (store opening, --json and --name flags)."""

from __future__ import annotations

from typing import Annotated

import typer

from slmops.store.registry import Store

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
ResultNameOpt = Annotated[str | None, typer.Option("--name", "-n", help="Registry name for the result.")]
ReportNameOpt = Annotated[str | None, typer.Option("--name", "-n", help="Registry name for the report.")]


def open_cli_store() -> Store:
    return Store()
