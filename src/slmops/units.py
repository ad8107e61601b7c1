"""Parsing human sizes and durations (``500MB``, ``2GiB``, ``10m``, ``500ms``) for flags and configs."""

from __future__ import annotations

import re

from slmops.errors import ConfigError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
                 "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4, "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(text: str | float, *, flag: str = "size") -> int:
    """``500MB`` → 500000000, ``2GiB`` → 2147483648; a bare number is bytes."""
    if isinstance(text, int | float):
        return int(text)
    m = _SIZE.match(text)
    unit = (m.group(2) or "").lower() if m else ""
    if not m or unit not in _SIZE_FACTORS:
        raise ConfigError(f"{flag} {text!r} is not a size", fix="write e.g. 500MB, 2GiB or 1500000 (bytes)")
    return int(float(m.group(1)) * _SIZE_FACTORS[unit])


def parse_duration(text: str | float, *, flag: str = "duration") -> float:
    """``10m`` → 600.0 seconds, ``500ms`` → 0.5; a bare number is seconds."""
    if isinstance(text, int | float):
        return float(text)
    m = _DURATION.match(text)
    if not m:
        raise ConfigError(f"{flag} {text!r} is not a duration", fix="write e.g. 500ms, 30s, 10m or 1h")
    return float(m.group(1)) * _DURATION_FACTORS[(m.group(2) or "").lower()]


def format_bytes(n: float | None, *, missing: str = "-") -> str:
    """``1536`` → ``"1.5 KiB"`` (binary units; whole bytes below 1 KiB); ``missing`` for None."""
    if n is None:
        return missing
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
