"""Process-wide settings read from the environment (``SLMOPS_HOME``, offline flags, keys named by ``--…-env`` flags)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = "~/.slmops"


def slmops_home() -> Path:
    """The store's root: ``$SLMOPS_HOME`` or ``~/.slmops``, expanded and absolute."""
    return Path(os.environ.get("SLMOPS_HOME") or DEFAULT_HOME).expanduser().resolve()


def env_flag(name: str) -> bool:
    """True when environment variable ``name`` is set to 1, true, yes or on (any case)."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """True when the user asked for no hub access (``HF_HUB_OFFLINE`` or ``SLMOPS_OFFLINE``)."""
    return any(env_flag(v) for v in ("HF_HUB_OFFLINE", "SLMOPS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def api_key_from_env(name: str | None, flag: str = "--api-key-env") -> str | None:
    """The secret in environment variable ``name`` (None when no name was given); keys never come from flags."""
    if not name:
        return None
    value = os.environ.get(name)
    if not value:
        from slmops.errors import ConfigError

        raise ConfigError(f"{flag} {name}: the environment variable {name} is not set or empty", fix=f"export {name}=<key>, or drop {flag}")
    return value
