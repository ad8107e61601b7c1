"""Options and helpers shared by the CLI verbs (store opening, --json flag)."""

from __future__ import annotations

from typing import Annotated

import typer

from slmops.store.registry import Store

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


def open_cli_store() -> Store:
    return Store()
