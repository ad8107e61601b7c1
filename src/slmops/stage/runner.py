"""The cached stage runner: every artifact-producing command and recipe step goes through here.

``key = sha256(stage, stage version, canonical config, input digests, fingerprint)``. A hit returns
the stored artifact without work; a miss runs the stage in a temp dir inside the store and commits
the result with its parents and resolved config.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from slmops.errors import ConfigError
from slmops.stage import RunOptions, Stage, StageContext, StageOutput, cache_key, get_stage
from slmops.stage.context import make_options
from slmops.store.artifact import Artifact, Parent, StageInfo
from slmops.store.registry import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    artifact: Artifact
    cached: bool
    stage: str
    version: int | None = None  # version under ``name`` when one was given

    @property
    def digest(self) -> str:
        return self.artifact.digest


def prepare_stage(name: str, inputs: dict[str, Artifact], config: BaseModel | dict[str, Any] | None) -> tuple[Stage, BaseModel, str]:
    """Check ``inputs`` against stage ``name``, validate its config and compute the cache key."""
    st = get_stage(name)
    missing = [r for r in st.inputs if r not in inputs]
    unknown = [r for r in inputs if r not in st.inputs and r not in st.optional_inputs]
    if missing or unknown:
        raise ConfigError(
            f"stage {name} got the wrong inputs",
            why=(f"missing {', '.join(missing)}" if missing else "") + ("; " if missing and unknown else "")
            + (f"unexpected {', '.join(unknown)}" if unknown else ""),
            fix=f"it takes {', '.join(st.inputs) or 'no inputs'}"
            + (f" (optional: {', '.join(st.optional_inputs)})" if st.optional_inputs else ""),
        )
    cfg = st.make_config(config)
    return st, cfg, cache_key(st, cfg, inputs)


def commit_output(store: Store, st: Stage, cfg: BaseModel, key: str, inputs: dict[str, Artifact], tmp: Path,
                  result: StageOutput, output_name: str | None, options: RunOptions | None = None) -> RunResult:
    """Register the files a stage wrote into ``tmp`` with their parents, resolved config and run options."""
    recorded = options.recorded() if options is not None else {}
    artifact = store.commit(
        tmp,
        kind=result.kind or st.kind,
        format=result.format or st.format,
        parents=[Parent(digest=a.digest, role=role) for role, a in sorted(inputs.items())],
        stage=StageInfo(name=st.name, version=st.version, config=cfg.model_dump(mode="json"), cache_key=key),
        metrics=result.metrics,
        meta={**result.meta, "run_options": recorded} if recorded else result.meta,
    )
    version = store.add_version(output_name, artifact.digest) if output_name else None
    return RunResult(artifact, False, st.name, version)


def cache_hit(store: Store, st: Stage, key: str, output_name: str | None) -> RunResult | None:
    """The stored result of an earlier identical run (named under ``output_name``), or None."""
    if (hit := store.cached(key)) is None:
        return None
    log.info("%s: cache hit %s", st.name, hit.short)
    version = store.add_version(output_name, hit.digest) if output_name else None
    return RunResult(hit, True, st.name, version)


def run_stage(
    name: str,
    inputs: dict[str, Artifact] | None = None,
    config: BaseModel | dict[str, Any] | None = None,
    *,
    store: Store,
    output_name: str | None = None,
    force: bool = False,
    options: RunOptions | Mapping[str, Any] | None = None,
) -> RunResult:
    """Run (or fetch from cache) stage ``name`` on ``inputs`` with ``config``.

    ``options`` (:class:`RunOptions`, or a mapping of its fields) change how the run goes, never its
    cache key; the ones that differ from the defaults are recorded in ``meta["run_options"]``.
    """
    inputs = dict(inputs or {})
    opts = make_options(options, where=f"the run options of stage {name}")
    st, cfg, key = prepare_stage(name, inputs, config)
    if not force and (hit := cache_hit(store, st, key, output_name)) is not None:
        return hit
    with store.staging() as tmp:
        log.info("%s: running into %s", name, tmp)
        ctx = StageContext(store=store, out=tmp, key=key, stage=st.name, options=opts)
        result = st.fn(inputs, cfg, ctx) or StageOutput()
        return commit_output(store, st, cfg, key, inputs, tmp, result, output_name, opts)
