"""The ``slmops`` command: registers each verb's module, turns SlmopsError into exit code 1 and usage errors into exit 2."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from slmops import __version__
from slmops.errors import SlmopsError

app = typer.Typer(
    name="slmops",
    help="The small-language-model lifecycle on one machine, offline: data, models, fine-tune, distill, "
    "export, evaluate, serve, monitor — every artifact in a local registry with its lineage.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"slmops {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    home: Annotated[Path | None, typer.Option("--home", help="Store location (default $SLMOPS_HOME or ~/.slmops).")] = None,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logging (-v info, -vv debug).")] = 0,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    if home is not None:
        os.environ["SLMOPS_HOME"] = str(home.expanduser().resolve())
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if verbose < 2:  # third-party chatter (e.g. bitsandbytes' optional CPU kernels) is not the user's problem
        for noisy in ("bitsandbytes", "httpx", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


def _register() -> None:
    from slmops.cli import data, doctor, generate, models, profile, run

    doctor.register(app)
    app.add_typer(models.app, name="models")
    app.add_typer(data.app, name="data")
    generate.register(app)
    run.register(app)
    app.add_typer(profile.app, name="profile")
    from slmops.cli import distill

    distill.register(app)
    from slmops.cli import serve

    serve.register(app)
    from slmops.cli import export, optimize, parity

    export.register(app)
    parity.register(app)
    optimize.register(app)
    from slmops.cli import evaluate

    evaluate.register(app)
    from slmops.cli import adapters, finetune

    app.add_typer(finetune.app, name="finetune")
    app.add_typer(adapters.app, name="adapters")
    from slmops.cli import monitor

    monitor.register(app)
    from slmops.cli import bundle

    bundle.register(app)
    from slmops.cli import store

    store.register(app)


_register()


#: Below this many columns typer's rich help panels squeeze each option's help into a few words a line.
PLAIN_HELP_BELOW = 100


@contextlib.contextmanager
def _narrow_help(args: list[str]) -> Iterator[None]:
    """On a narrow terminal (80 columns) ``--help`` uses click's plain two-column layout, which wraps help text whole."""
    import typer.core
    from rich.console import Console

    before = typer.core.HAS_RICH
    if (not args or "-h" in args or "--help" in args) and Console().width < PLAIN_HELP_BELOW:  # the width rich would draw at
        typer.core.HAS_RICH = False  # read by typer when it formats help
    try:
        yield
    finally:
        typer.core.HAS_RICH = before


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script and ``python -m slmops``."""
    with _narrow_help(sys.argv[1:] if argv is None else list(argv)):
        _main(argv)


def _main(argv: list[str] | None) -> None:
    try:
        app(args=argv, standalone_mode=False)
    except SlmopsError as exc:
        from rich.text import Text

        from slmops.cli.render import err

        err.print(Text.assemble(("error:", "bold red"), " ", exc.message), highlight=False)  # literal: refs and data may hold [markup]
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if _is_usage_error(exc):  # a missing option, an unknown command, `--max-tokens abc`: usage message, exit 2
            _show_usage_error(exc)
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        raise


def _is_usage_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a click-style error that carries its own message and exit code.

    Typer raises the classes of the click copy it vendors (subclasses of ``typer.TyperException``),
    not ``click.ClickException``; both are recognised.
    """
    kinds: list[type[BaseException]] = [typer.TyperException]
    try:
        import click

        kinds.append(click.ClickException)
    except ImportError:  # pragma: no cover - typer no longer needs click
        pass
    return isinstance(exc, tuple(kinds)) and callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int)


def _show_usage_error(exc: Exception) -> None:
    """Print it as Typer itself would (usage line, hint, boxed message; user text printed literally)."""
    try:
        from typer import rich_utils

        rich_utils.rich_format_error(exc)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - an exception of the real click, or a Typer without rich: its own plain format
        exc.show()  # type: ignore[attr-defined]
