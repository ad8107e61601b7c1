"""The server's settings (:class:`ServeConfig`) and the parsers for what the CLI passes in (``10m``, canary weights).

Everything the server does differently from its defaults is decided here, once, and validated
strictly (pydantic, ``extra="forbid"``), so the CLI, a Python caller and a test build the same thing.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from slmops import units
from slmops.errors import ConfigError


def parse_duration(text: str | float, *, flag: str = "--ttl") -> float:
    """:func:`slmops.units.parse_duration` with the server's most common flag named in its error."""
    return units.parse_duration(text, flag=flag)


def parse_canary(text: str) -> dict[str, float]:
    """``"bot@prod=90,bot@canary=10"`` → ``{"bot@prod": 90.0, "bot@canary": 10.0}`` (the first ref names the group)."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        ref, sep, weight = part.rpartition("=")
        try:
            w = float(weight)
        except ValueError:
            w = -1.0
        if not sep or not ref or w < 0:
            raise ConfigError(f"--canary {text!r} is not a list of REF=WEIGHT", fix="e.g. --canary bot@prod=90,bot@canary=10")
        out[ref.strip()] = w
    if len(out) < 2 or sum(out.values()) <= 0:
        raise ConfigError(f"--canary {text!r} needs at least two refs and a positive total weight", fix="e.g. bot@prod=90,bot@canary=10")
    return out


class ServeConfig(BaseModel):
    """How ``slmops serve`` runs: what it serves, how much it queues, who may call it and what it records."""

    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(default_factory=list, description="Model ids served (names, name:VERSION, name@ALIAS); empty = any model in the store")
    host: str = Field("127.0.0.1", description="Address to bind; anything but loopback exposes the server to the network")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 = any free port)")
    api_key: SecretStr | None = Field(None, description="When set, every route but /health needs 'Authorization: Bearer KEY'")
    metrics_auth: bool = Field(True, description="Whether /metrics needs the API key too (when one is set)")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed by CORS; empty = CORS off")
    allowed_hosts: list[str] = Field(default_factory=list, description="Host names a server without an API key answers besides "
                                     "localhost, 127.0.0.1, [::1] and --host ('*' = any; DNS-rebinding protection off)")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 beyond)")
    render_timeout_s: float = Field(2.0, gt=0, description="Longest a chat template may take to render for one request (within --timeout)")
    max_queue: int = Field(16, ge=0, description="Requests that may wait per model beyond the running ones; more get 503 + Retry-After")
    parallel: int = Field(4, ge=1, le=64, description="Requests generating at once per model (batched where the runtime can)")
    timeout_s: float = Field(300.0, gt=0, description="Longest a request may take, queueing included (504 after)")
    ttl_s: float = Field(600.0, ge=0, description="Unload a model idle this long (0 = never)")
    max_loaded: int = Field(2, ge=1, description="Most base models loaded at once; the least recently used idle one is evicted")
    runtime: str = Field("auto", description="auto (by the artifact's format), torch, ort-genai or llamacpp")
    threads: int | None = Field(None, ge=1, le=256, description="CPU threads per forward pass: torch's intra-op threads, or llama.cpp's batch context (default: the runtime's choice)")
    default_max_tokens: int | None = Field(None, ge=1, description="max_tokens when a request gives none (default: the rest of the context)")
    canary: dict[str, dict[str, float]] = Field(default_factory=dict, description="Group id -> {ref: weight}: traffic split by weight")
    canary_seed: int | None = Field(None, description="Seed for the canary draw (tests)")
    log_requests: bool = Field(True, description="Record each request's metadata in the SQLite request log")
    request_log: Path | None = Field(None, description="Request log path (default: $SLMOPS_HOME/serve/requests.db)")
    log_content: bool = Field(False, description="Also record prompts and completions (off: privacy first)")
    preload: bool = Field(False, description="Load the listed models at start instead of on their first request")
    drift_baseline: str | None = Field(None, description="Dataset to compare logged prompts with periodically (needs log_content)")
    drift_every_s: float = Field(300.0, gt=0, description="Seconds between drift checks (with drift_baseline)")
    drift_window_s: float = Field(3600.0, gt=0, description="Each drift check compares the requests of this last period")
    judge_url: str | None = Field(None, description="OpenAI-compatible base URL (…/v1) of a judge that re-scores sampled requests (needs log_content)")
    judge_model: str = Field("judge", description="Model id the judge endpoint serves")
    judge_api_key: SecretStr | None = Field(None, description="The judge's API key")
    judge_rate: float = Field(0.05, gt=0, le=1, description="Share of logged requests the judge scores (stable per request)")
    judge_every_s: float = Field(300.0, gt=0, description="Seconds between judge rounds (with judge_url)")

    @field_validator("models")
    @classmethod
    def _ids(cls, v: list[str]) -> list[str]:
        out = [m.strip() for m in v]
        if any(not m for m in out):
            raise ValueError("model ids must not be empty")
        return list(dict.fromkeys(out))

    @field_validator("canary")
    @classmethod
    def _weights(cls, v: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for group, refs in v.items():
            if len(refs) < 2 or any(w < 0 for w in refs.values()) or sum(refs.values()) <= 0:
                raise ValueError(f"canary group {group!r} needs two or more refs with non-negative weights and a positive total")
        return v

    def add_canary(self, spec: str) -> None:
        refs = parse_canary(spec)
        self.canary[next(iter(refs))] = refs
