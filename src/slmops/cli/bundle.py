"""``slmops bundle``: write a self-contained, checksummed folder that serves one model on a device class."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from slmops import formats
from slmops.cli.common import JsonOpt, open_cli_store
from slmops.cli.render import emit, esc, out


def register(app: typer.Typer) -> None:
    @app.command()
    def bundle(
        model: Annotated[str, typer.Argument(help="Model, gguf or onnx artifact (name, name:VERSION, name@ALIAS, sha256:…).")],
        profile: Annotated[str, typer.Option("--profile", "-p", help="Device profile whose limits (formats, size) the model must fit.")],
        out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (new or empty).")],
        name: Annotated[str, typer.Option("--name", help="Model id the bundle serves.")] = "model",
        port: Annotated[int, typer.Option("--port", help="Port in serve.json, the unit and the Containerfile.")] = 8000,
        as_json: JsonOpt = False,
    ) -> None:
        """Bundle a model for offline serving: artifact + manifest, serve.json, systemd unit, Containerfile, SHA256SUMS."""
        from slmops.deploy.bundle import write_bundle
        from slmops.deploy.profiles import load_profile
        from slmops.pipeline.inputs import resolve_input

        with open_cli_store() as store:
            art = resolve_input(model, store, kind=formats.model_kinds())
            summary = write_bundle(art, load_profile(store, profile), out_dir, name=name, port=port)
        emit(summary, as_json, _show)


def _show(d: dict[str, Any]) -> None:
    out.print(f"bundle [bold]{esc(d['out'])}[/]: {esc(d['name'])} (sha256:{d['digest'][:12]}, {d['size_bytes']} B) for profile {esc(d['profile'])}, "
              f"{d['files']} files checksummed", markup=True)
    out.print(f"  run it: slmops serve --bundle {d['out']}")
