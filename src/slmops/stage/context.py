"""What the runner hands every stage: the store, the output dir, the cache key and run options outside the key.

A stage never rebuilds this from paths or globals. ``out`` is a temp dir inside the store that
vanishes if the stage fails; whatever must survive a crash (checkpoints, partial results) lives in
:attr:`StageContext.workdir`, ``$SLMOPS_HOME/runs/<cache key>/``, which :meth:`Store.gc` leaves alone.

:class:`RunOptions` is the one place for settings that change *how* a run goes but not *what* it
produces (resume policy, checkpoint cadence, executor, batching, request pacing). They are never part
of the cache key, so a resumed run with other options is the same run and finds the same work dir;
the runner records the ones that differ from the defaults in the artifact's ``meta["run_options"]``.
They come from ``run_stage(options=)``, the CLI flags (``--save-every``, ``--resume``, ``--executor``…)
and a recipe step's ``options:`` mapping. Each stage reads the fields that apply to it.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from slmops.errors import ConfigError
from slmops.stage.registry import validate_config
from slmops.store.registry import Store


class RunOptions(BaseModel):
    """How a run behaves, not what it produces: never part of the cache key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # -- resume and checkpoints (training, teacher generation, evaluation) ------------------------
    resume: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: continue from a checkpoint of the same run if one exists; always: require one (--resume); never: start over (--no-resume)"
    )
    save_every: int = Field(100, ge=0, description="Write a training checkpoint every N optimizer steps (0 = only on SIGTERM)")
    keep_checkpoints: int = Field(2, ge=1, description="How many recent training checkpoints to keep")
    keep_run_dir: bool = Field(False, description="Keep the run's work dir (checkpoints, work file) after the run succeeded (default: delete it)")
    report_to: list[Literal["tensorboard"]] = Field(
        default_factory=list, description="Also log training curves to: tensorboard (files under $SLMOPS_HOME/runs/<key>/tensorboard)"
    )
    # -- where the work runs ------------------------------------------------------------------------
    executor: Literal["local", "ray"] = Field(
        "local", description="local: this process does the work; ray: shard it over Ray actors (--workers)")
    workers: int = Field(1, ge=1, le=1024, description="Ray actors (shards) with --executor ray")
    ray_address: str | None = Field(None, description="Ray cluster for --executor ray (default RAY_ADDRESS, else a local one)")
    # -- batching and request pacing -------------------------------------------------------------------
    batch_size: int | None = Field(
        None, ge=1, le=1024, description="Examples per inference batch: checkpointed for resume, concurrent requests for a URL "
        "(default: the stage's own, 8 for teacher generation and eval, 4 for shrink)")
    concurrency: int = Field(4, ge=1, le=256, description="Requests to a teacher endpoint in flight at once")
    rpm: float | None = Field(None, gt=0, description="Requests per minute at most (token bucket)")
    request_timeout_s: float | None = Field(None, gt=0, description="Timeout of one HTTP request in seconds (default: 60 for a teacher, 120 for eval)")
    max_retries: int = Field(5, ge=0, le=50, description="Retries on 429/5xx/timeouts/connection errors")
    backoff_base_s: float = Field(1.0, ge=0, description="First retry delay bound; doubles each retry (full jitter)")
    backoff_max_s: float = Field(30.0, ge=0, description="Largest retry delay bound")
    api_key_env: str | None = Field(None, description="Name of the environment variable holding a teacher endpoint's API key")
    api_key_header: Literal["authorization", "api-key"] = Field(
        "authorization", description="Send the key as 'Authorization: Bearer' (OpenAI) or 'api-key' (Azure)"
    )
    cache: bool = Field(True, description="Reuse cached teacher responses ($SLMOPS_HOME/cache/teacher)")
    price_prompt_per_1m: float | None = Field(None, ge=0, description="Price per million prompt tokens (for the cost metric)")
    price_completion_per_1m: float | None = Field(None, ge=0, description="Price per million completion tokens")
    min_success_ratio: float = Field(0.95, ge=0, le=1, description="Fail the run when fewer requests than this share got an answer")

    @field_validator("report_to", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [s.strip() for s in v.split(",") if s.strip() and s.strip() != "none"]
        return v

    def batch(self, default: int) -> int:
        """``batch_size``, or the calling stage's ``default``."""
        return self.batch_size if self.batch_size is not None else default

    def timeout(self, default: float) -> float:
        """``request_timeout_s``, or the calling stage's ``default``."""
        return self.request_timeout_s if self.request_timeout_s is not None else default

    def recorded(self) -> dict[str, Any]:
        """The options that differ from the defaults, for the manifest's ``meta["run_options"]``."""
        return self.model_dump(mode="json", exclude_defaults=True)


OPTION_FIELDS: tuple[str, ...] = tuple(RunOptions.model_fields)


def resume_or_start_over(progress: Path, options: RunOptions, *, what: str) -> bool:
    """Apply ``options.resume`` to a stage's saved progress (a file or folder in its work dir); True when it is kept.

    ``never`` deletes it (the run starts over); ``always`` requires it; ``auto`` keeps what is there.
    """
    found = progress.exists()
    if options.resume == "never" and found:
        if progress.is_dir():
            shutil.rmtree(progress)
        else:
            progress.unlink()
        return False
    if options.resume == "always" and not found:
        raise ConfigError(f"--resume: no saved {what} of this exact run", why=f"{progress} does not exist",
                          fix="run without --resume (same config and inputs find the same run)")
    return found


def make_options(values: RunOptions | Mapping[str, Any] | None, *, where: str = "the run options") -> RunOptions:
    """Validate ``values`` as :class:`RunOptions`; one :class:`~slmops.errors.ConfigError` naming each bad field."""
    if isinstance(values, RunOptions):
        return values
    return validate_config(RunOptions, dict(values or {}), where=where)  # type: ignore[return-value]


def split_options(values: Mapping[str, Any], config: type[BaseModel]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a flat mapping (YAML merged with flags) into (config values, run-option values).

    A name the stage's ``config`` declares stays config (``batch_size`` of a fine-tune is cache-keyed);
    any other :class:`RunOptions` field becomes a run option; the rest stays for the config to refuse.
    """
    cfg = {k: v for k, v in values.items() if k in config.model_fields or k not in RunOptions.model_fields}
    opts = {k: v for k, v in values.items() if k not in cfg}
    return cfg, opts


@dataclass(frozen=True)
class StageContext:
    """Everything the runner knows about one stage call."""

    store: Store
    out: Path
    key: str
    stage: str
    options: RunOptions = field(default_factory=RunOptions)

    @property
    def workdir(self) -> Path:
        """``$SLMOPS_HOME/runs/<key>/``: survives a crash and ``gc``; the same call finds it again."""
        return self.store.home / "runs" / self.key
