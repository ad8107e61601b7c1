"""What the runner hands every stage: the store, the output dir, the cache key and run options outside the key.

A stage never rebuilds this from paths or globals. ``out`` is a temp dir inside the store that
vanishes if the stage fails; whatever must survive a crash (checkpoints, partial results) lives in
:attr:`StageContext.workdir`, ``$SLMOPS_HOME/runs/<cache key>/``, which :meth:`Store.gc` leaves alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from slmops.store.registry import Store


class RunOptions(BaseModel):
    """How a run behaves, not what it produces: never part of the cache key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resume: bool = Field(True, description="Resume from the last checkpoint of an interrupted identical run")


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
