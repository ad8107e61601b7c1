"""Named object-store remotes of a store (``slmops store remote add NAME s3://bucket/prefix``).

A remote is a URL (``s3://bucket/prefix``), an optional S3-compatible endpoint and region, kept in
the ``remotes`` table of ``registry.db``. Credentials are never stored: boto3 takes them from the
environment or the standard AWS configuration (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ``~/.aws``,
instance roles), so a URL or endpoint that carries a user or password is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from slmops.errors import ConfigError, StoreError
from slmops.store.registry import Store, check_name

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class RemoteSpec:
    """Where a remote lives: ``s3://bucket/prefix`` at ``endpoint_url`` (None: AWS itself)."""

    name: str
    url: str
    endpoint_url: str | None = None
    region: str | None = None
    default: bool = False

    @property
    def bucket(self) -> str:
        return parse_url(self.url)[0]

    @property
    def prefix(self) -> str:
        return parse_url(self.url)[1]

    @property
    def where(self) -> str:
        """How errors name the remote: the URL and the endpoint it is reached through."""
        return f"{self.url} at {self.endpoint_url}" if self.endpoint_url else self.url

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "url": self.url, "endpoint_url": self.endpoint_url, "region": self.region, "default": self.default}


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``; refuses credentials and other schemes."""
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise ConfigError(f"remote URL {url!r} is not s3://BUCKET/PREFIX", fix="write e.g. s3://my-bucket/slmops (any S3-compatible store; --endpoint-url for non-AWS)")
    if parts.username or parts.password or "@" in parts.netloc:
        raise ConfigError(f"remote URL {url!r} carries credentials", why="credentials are never written to the store",
                          fix="drop them from the URL; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE instead")
    if parts.query or parts.fragment or not _BUCKET.match(parts.netloc):
        raise ConfigError(f"remote URL {url!r} is not s3://BUCKET/PREFIX", why="bucket names are 3-63 lower-case letters, digits, '.' and '-'")
    return parts.netloc, parts.path.strip("/")


def _check_endpoint(endpoint_url: str | None) -> str | None:
    if endpoint_url is None:
        return None
    parts = urlsplit(endpoint_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--endpoint-url {endpoint_url!r} is not an http(s) URL", fix="write e.g. http://127.0.0.1:9000")
    if parts.username or parts.password:
        raise ConfigError(f"--endpoint-url {endpoint_url!r} carries credentials", why="credentials are never written to the store",
                          fix="drop them from the URL; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE instead")
    return endpoint_url.rstrip("/")


def add_remote(store: Store, name: str, url: str, *, endpoint_url: str | None = None, region: str | None = None,
               default: bool = False) -> RemoteSpec:
    """Add (or replace) remote ``name``; the first remote becomes the default."""
    check_name(name, "remote name")
    parse_url(url)
    endpoint_url = _check_endpoint(endpoint_url)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    with store._write() as c:
        first = c.execute("SELECT COUNT(*) FROM remotes WHERE name != ?", (name,)).fetchone()[0] == 0
        if default or first:
            c.execute("UPDATE remotes SET is_default = 0")
        c.execute("INSERT OR REPLACE INTO remotes(name, url, endpoint_url, region, is_default, updated_at) VALUES (?,?,?,?,?,?)",
                  (name, url.rstrip("/"), endpoint_url, region, int(default or first), now))
    return get_remote(store, name)


def list_remotes(store: Store) -> list[RemoteSpec]:
    return [_spec(r) for r in store._rows("SELECT * FROM remotes ORDER BY name")]


def get_remote(store: Store, name: str | None = None) -> RemoteSpec:
    """Remote ``name``, or the default one when ``name`` is None."""
    rows = store._rows("SELECT * FROM remotes WHERE name = ?", name) if name else store._rows("SELECT * FROM remotes WHERE is_default = 1")
    if rows:
        return _spec(rows[0])
    known = ", ".join(r.name for r in list_remotes(store)) or "none"
    raise StoreError(f"no remote {name!r}" if name else "no default remote", why=f"remotes of this store: {known}",
                     fix="add one with `slmops store remote add NAME s3://BUCKET/PREFIX [--endpoint-url URL]`")


def remove_remote(store: Store, name: str) -> bool:
    with store._write() as c:
        gone = c.execute("DELETE FROM remotes WHERE name = ?", (name,)).rowcount > 0
        if gone and not c.execute("SELECT 1 FROM remotes WHERE is_default = 1").fetchone():
            c.execute("UPDATE remotes SET is_default = 1 WHERE name = (SELECT name FROM remotes ORDER BY name LIMIT 1)")
    return gone


def _spec(row: object) -> RemoteSpec:
    r = dict(row)  # type: ignore[call-overload]
    return RemoteSpec(r["name"], r["url"], r["endpoint_url"], r["region"], bool(r["is_default"]))
