"""Error types: every error slmops raises on purpose says what went wrong, why, and the fix.

The CLI turns a :class:`SlmopsError` into a one-line message and exit code 1; any other exception
keeps its traceback, because it is a bug.
"""

from __future__ import annotations


class SlmopsError(Exception):
    """A user-facing error: ``what`` happened, ``why`` it happened and how to ``fix`` it."""

    exit_code = 1

    def __init__(self, what: str, *, why: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.why = why
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        parts = [self.what.rstrip(".")]
        if self.why:
            parts.append(self.why.rstrip("."))
        if self.fix:
            parts.append(self.fix.rstrip("."))
        return ": ".join(parts[:2]) + (f"; {parts[2]}" if len(parts) > 2 else "")

    def to_dict(self) -> dict[str, str | None]:
        return {"error": type(self).__name__, "what": self.what, "why": self.why, "fix": self.fix}


class ConfigError(SlmopsError):
    """A configuration value (flag, YAML field, environment variable) is invalid."""


class DataError(SlmopsError):
    """Input data is malformed (the message names file and line)."""


class StoreError(SlmopsError):
    """The artifact store is missing something, or holds something inconsistent."""


class RefError(SlmopsError):
    """A model/artifact reference cannot be parsed or resolved."""


class IntegrityError(StoreError):
    """An artifact's content no longer matches its recorded digest."""


class MissingDependency(SlmopsError):
    """An optional dependency is not installed; the fix names the extra."""


class OfflineError(SlmopsError):
    """A networked operation was asked for but the network (or hub) is not reachable."""


class UnsafeInput(SlmopsError):
    """Input that slmops refuses to load for safety (pickles, remote code, escaping paths)."""
