"""The OpenAI-compatible server: ``create_app(ServeConfig(...))`` or ``slmops serve``.

Importing this package is light (no FastAPI, no torch); :func:`create_app` imports the server's
dependencies (the ``[serve]`` extra) when it is called.
"""

from __future__ import annotations

from typing import Any

from slmops.serve.config import ServeConfig, parse_canary, parse_duration

__all__ = ["ServeConfig", "create_app", "parse_canary", "parse_duration", "serve"]


def create_app(*args: Any, **kwargs: Any) -> Any:
    from slmops.serve.app import create_app as _create

    return _create(*args, **kwargs)


def serve(*args: Any, **kwargs: Any) -> None:
    from slmops.serve.app import serve as _serve

    _serve(*args, **kwargs)
