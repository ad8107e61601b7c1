"""Device profiles: what a class of target machines allows (memory, disk, speed, formats).

``detect_profile()`` describes this machine; named profiles are documents in the store
(``store.documents("profiles")``, a table the store's migrations own) so ``optimize --profile NAME``
and bundles can pick the right variant per device class. A profile's limits are gates
(:data:`PROFILE_LIMITS`, the same fields the optimizer takes), checked against measured candidates
with :func:`check_profile` through :mod:`slmops.evaluate.gates`.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from slmops import formats as format_registry
from slmops.errors import ConfigError, StoreError
from slmops.evaluate.gates import Limits, check_gates, limit_gates
from slmops.store.registry import Store, check_name

#: A profile's limits as gates on a candidate's measurements (field names shared with ``optimize``).
PROFILE_LIMITS: Limits = {
    "max_size_bytes": ("size_bytes", "<="), "max_rss_bytes": ("peak_rss_bytes", "<="), "min_tokens_per_s": ("decode_tokens_per_s", ">="),
}


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
    store.documents("profiles").put(profile.name, profile.model_dump(mode="json"))


def load_profile(store: Store, name: str) -> DeviceProfile:
    docs = store.documents("profiles")
    doc = docs.get(name)
    if doc is None:
        raise StoreError(f"no device profile {name!r}", why=f"saved profiles: {', '.join(docs.names()) or 'none'}",
                         fix="create one with `slmops profile create NAME ...` or `slmops profile detect --save`")
    return DeviceProfile.model_validate(doc)


def list_profiles(store: Store) -> list[DeviceProfile]:
    return [DeviceProfile.model_validate(doc) for doc in store.documents("profiles").all().values()]


def remove_profile(store: Store, name: str) -> bool:
    return store.documents("profiles").remove(name)


def check_profile(profile: DeviceProfile, *, format: str, size_bytes: int | None = None, peak_rss_bytes: int | None = None,
                  tokens_per_s: float | None = None) -> list[str]:
    """Reasons a measured candidate does not fit ``profile`` (empty when it fits); what was not measured is not held against it."""
    reasons = []
    if format not in profile.formats:
        reasons.append(f"format {format} not allowed (allowed: {', '.join(profile.formats)})")
    measured = {"size_bytes": size_bytes, "peak_rss_bytes": peak_rss_bytes, "decode_tokens_per_s": tokens_per_s}
    reasons += [r.detail for r in check_gates(limit_gates(profile, PROFILE_LIMITS), measured, unmeasured="skip") if not r.passed]
    return reasons


def apply_profile(cfg: dict[str, Any], profile: DeviceProfile) -> dict[str, Any]:
    """An ``optimize`` config narrowed to ``profile``: its size, memory and speed limits become gates (flags
    given explicitly win) and targets in formats the profile does not allow are dropped."""
    out = dict(cfg)
    for field in PROFILE_LIMITS:
        if getattr(profile, field) and field not in out:
            out[field] = getattr(profile, field)
    targets = out.get("targets") or []
    kept = [t for t in targets if (f := format_registry.by_target(t.split(":", 1)[0])) is not None and f.name in profile.formats]
    if targets and not kept:
        raise ConfigError(f"profile {profile.name} allows none of the targets {', '.join(targets)}",
                          why=f"it allows the formats {', '.join(profile.formats)}",
                          fix=f"pick targets in an allowed format ({', '.join(f'{f.target}:… → {f.name}' for f in format_registry.all_formats() if f.target)})")
    out["targets"] = kept
    return out
