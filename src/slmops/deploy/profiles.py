"""Device profiles: what a class of target machines allows (memory, disk, speed, formats).

``detect_profile()`` describes this machine; named profiles are stored in the registry
(``profiles`` table) so ``optimize --profile NAME`` and bundles can pick the right variant per
device class. A profile's limits are checked against measured candidates with :func:`check_profile`.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from slmops import formats as format_registry
from slmops.errors import ConfigError, StoreError
from slmops.store.registry import Store, check_name


class DeviceProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Profile name, e.g. laptop-8gb or raspberry-pi")
    max_rss_bytes: int | None = Field(None, ge=1, description="Peak resident memory a served model may use")
    max_size_bytes: int | None = Field(None, ge=1, description="Largest artifact on disk")
    min_tokens_per_s: float | None = Field(None, gt=0, description="Slowest acceptable decode speed")
    formats: list[str] = Field(default_factory=lambda: list(format_registry.names(served=True)),
                               description=f"Allowed artifact formats: {', '.join(format_registry.names(served=True))}")
    machine: dict[str, Any] = Field(default_factory=dict, description="What `profile detect` recorded (cores, RAM, CPU features)")
    notes: str = Field("", description="Free text")

    def model_post_init(self, _: Any) -> None:
        check_name(self.name, "profile name")
        known = format_registry.names(served=True)
        bad = [f for f in self.formats if f not in known]
        if bad:
            raise ConfigError(f"--formats {', '.join(bad)}: unknown format", fix=f"use some of: {', '.join(known)}")


def detect_profile(name: str = "this-machine") -> DeviceProfile:
    """A profile describing this machine, with limits derived from it (RSS ≤ half the RAM)."""
    from slmops.sysinfo import accelerators, cpu_features, memory_bytes

    mem = memory_bytes()
    machine = {"cores": os.cpu_count(), "memory_bytes": mem["total"], "cpu": cpu_features(), "accelerators": accelerators()}
    return DeviceProfile(name=name, max_rss_bytes=mem["total"] // 2, machine=machine, notes="detected")


def save_profile(store: Store, profile: DeviceProfile) -> None:
    with store._write() as c:
        c.execute("INSERT OR REPLACE INTO profiles(name, spec, updated_at) VALUES (?,?,?)",
                  (profile.name, profile.model_dump_json(), datetime.now(UTC).isoformat(timespec="seconds")))


def load_profile(store: Store, name: str) -> DeviceProfile:
    rows = store._rows("SELECT spec FROM profiles WHERE name = ?", name)
    if not rows:
        known = [r["name"] for r in store._rows("SELECT name FROM profiles ORDER BY name")]
        raise StoreError(f"no device profile {name!r}", why=f"saved profiles: {', '.join(known) or 'none'}",
                         fix="create one with `slmops profile create NAME ...` or `slmops profile detect --save`")
    return DeviceProfile.model_validate(json.loads(rows[0]["spec"]))


def list_profiles(store: Store) -> list[DeviceProfile]:
    return [DeviceProfile.model_validate(json.loads(r["spec"])) for r in store._rows("SELECT spec FROM profiles ORDER BY name")]


def remove_profile(store: Store, name: str) -> bool:
    with store._write() as c:
        return c.execute("DELETE FROM profiles WHERE name = ?", (name,)).rowcount > 0


def check_profile(profile: DeviceProfile, *, format: str, size_bytes: int | None = None, peak_rss_bytes: int | None = None,
                  tokens_per_s: float | None = None) -> list[str]:
    """Reasons a measured candidate does not fit ``profile`` (empty when it fits)."""
    reasons = []
    if format not in profile.formats:
        reasons.append(f"format {format} not allowed (allowed: {', '.join(profile.formats)})")
    if profile.max_size_bytes and size_bytes is not None and size_bytes > profile.max_size_bytes:
        reasons.append(f"size {size_bytes} B > {profile.max_size_bytes} B")
    if profile.max_rss_bytes and peak_rss_bytes is not None and peak_rss_bytes > profile.max_rss_bytes:
        reasons.append(f"peak RSS {peak_rss_bytes} B > {profile.max_rss_bytes} B")
    if profile.min_tokens_per_s and tokens_per_s is not None and tokens_per_s < profile.min_tokens_per_s:
        reasons.append(f"{tokens_per_s:.1f} tok/s < {profile.min_tokens_per_s:.1f} tok/s")
    return reasons


def apply_profile(cfg: dict[str, Any], profile: DeviceProfile) -> dict[str, Any]:
    """An ``optimize`` config narrowed to ``profile``: its size and speed limits become gates (flags
    given explicitly win) and targets in formats the profile does not allow are dropped."""
    out = dict(cfg)
    if profile.max_size_bytes and "max_size_bytes" not in out:
        out["max_size_bytes"] = profile.max_size_bytes
    if profile.min_tokens_per_s and "min_tokens_per_s" not in out:
        out["min_tokens_per_s"] = profile.min_tokens_per_s
    targets = out.get("targets") or []
    kept = [t for t in targets if (f := format_registry.by_target(t.split(":", 1)[0])) is not None and f.name in profile.formats]
    if targets and not kept:
        raise ConfigError(f"profile {profile.name} allows none of the targets {', '.join(targets)}",
                          why=f"it allows the formats {', '.join(profile.formats)}",
                          fix=f"pick targets in an allowed format ({', '.join(f'{f.target}:… → {f.name}' for f in format_registry.all_formats() if f.target)})")
    out["targets"] = kept
    return out
