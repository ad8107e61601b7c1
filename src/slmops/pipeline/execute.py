"""Running a recipe: every step through the cached stage runner, in dependency order.

An unchanged recipe re-runs with zero work (every step is a cache hit); after a crash or Ctrl-C
the next run finds the finished steps cached and resumes at the one that failed. A failed gate
stops the run with :class:`~slmops.evaluate.gates.GateFailed` (exit code 3, as for ``eval``) naming
the gate and the margin; ``ref`` in a gate is the metrics of the step's ``ref:`` (or ``ref`` input).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slmops import progress
from slmops.errors import ConfigError, SlmopsError
from slmops.pipeline.actions import get_action
from slmops.pipeline.inputs import resolve_input
from slmops.pipeline.recipe import REF, Recipe, StepSpec, split_ref, substitute_vars
from slmops.stage import cache_key, get_stage
from slmops.stage.runner import run_stage
from slmops.store.artifact import Artifact
from slmops.store.registry import Store

log = logging.getLogger(__name__)


@dataclass
class StepResult:
    step: str
    kind: str  # stage name or action
    status: str  # ran, cached, done, planned, skipped
    seconds: float = 0.0
    artifact: Artifact | None = None
    name: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    gates: list[dict[str, Any]] = field(default_factory=list)
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step, "kind": self.kind, "status": self.status, "seconds": round(self.seconds, 3),
            "digest": self.artifact.digest if self.artifact else None, "artifact_kind": self.artifact.kind if self.artifact else None,
            "name": self.name, "metrics": self.metrics, "gates": self.gates, "detail": self.detail,
        }


def _input(ref: str, done: dict[str, StepResult], store: Store, where: str, steps: dict[str, StepSpec], *, strict: bool = True) -> Artifact | None:
    m = REF.fullmatch(ref.strip())
    if m:
        step, field = split_ref(m.group(1), steps)
        res = done.get(step)
        if res is None or res.artifact is None:
            return None
        if field is None:
            return res.artifact
        digest = res.artifact.manifest.metrics.get(f"{field}_digest")
        if not digest:
            if not strict:
                return None
            has = f"its {field}_digest is empty" if f"{field}_digest" in res.artifact.manifest.metrics else f"its output reports no metric {field}_digest"
            raise ConfigError(f"{where}: {ref} names no artifact", why=f"step {step!r}: {has}",
                              fix=f"see that step's report (slmops models show sha256:{res.artifact.short}); a gate on it stops the run earlier")
        return store.get(digest)
    try:
        return resolve_input(ref, store)
    except SlmopsError as exc:
        raise ConfigError(f"{where}: {exc.what}", why=exc.why, fix=exc.fix) from exc


def check_step_gates(step: str, recipe: Recipe, metrics: dict[str, Any], done: dict[str, StepResult], store: Store) -> list[dict[str, Any]]:
    """Check a step's ``gates:`` on its output's metrics (``ref`` = its ``ref:``'s metrics); raise GateFailed naming the step."""
    from slmops.evaluate.gates import check_gates, enforce, parse_gates

    spec, where = recipe.steps[step], f"step {step!r}"
    if not spec.gates:
        return []
    gates = parse_gates(substitute_vars(spec.gates, recipe.vars, f"{where}, gates"))
    ref = spec.gate_ref()
    ref_art = _input(ref, done, store, f"{where}, ref", recipe.steps) if ref and any(g.relative for g in gates) else None
    try:
        results = check_gates(gates, metrics, ref_art.manifest.metrics if ref_art is not None else None)
    except ConfigError as exc:
        raise ConfigError(f"{where}, gates: {exc.what}", why=exc.why, fix=exc.fix) from exc
    enforce(results, where=where, fix="improve the model or relax the gate in the recipe")
    return [r.to_dict() for r in results]


def run_recipe(
    recipe: Recipe,
    *,
    store: Store,
    dry_run: bool = False,
    force: set[str] | None = None,
    until: str | None = None,
    on_step: Callable[[StepResult], None] | None = None,
    executor: str = "local",
    address: str | None = None,
) -> list[StepResult]:
    """Run (or with ``dry_run`` plan) ``recipe``; returns one result per step in run order.

    ``executor="ray"`` runs the steps as Ray tasks on the cluster at ``address`` (see
    :mod:`slmops.pipeline.ray_exec`); caching, gates, ``until`` and ``force`` behave the same.
    """
    force = force or set()
    unknown = force - set(recipe.steps)
    if unknown:
        raise ConfigError(f"--force {', '.join(sorted(unknown))}: no such step", fix=f"steps are: {', '.join(recipe.steps)}")
    if executor not in ("local", "ray"):
        raise ConfigError(f"--executor {executor!r} is not known", fix="use local (the default) or ray")
    if executor == "ray" and not dry_run:
        from slmops.pipeline.ray_exec import run_recipe_ray

        recipe.order(until)  # --until names a real step
        return run_recipe_ray(recipe, store=store, force=force, until=until, on_step=on_step, address=address)
    order = recipe.order(until)
    done: dict[str, StepResult] = {}
    results: list[StepResult] = []
    with progress.task(f"recipe {recipe.name}", total=len(order)) as bar:
        for step in order:
            spec = recipe.steps[step]
            where = f"step {step!r}"
            bar.advance(0, step=step)
            started = time.perf_counter()
            inputs = {role: _input(ref, done, store, f"{where}, input {role}", recipe.steps, strict=not dry_run) for role, ref in spec.inputs.items()}
            target = _input(spec.target, done, store, f"{where}, target", recipe.steps, strict=not dry_run) if spec.target else None
            if spec.stage is not None:
                cfg = substitute_vars(spec.config, recipe.vars, f"{where}, config")
                if dry_run:
                    res = _plan(step, spec, inputs, cfg, store)
                else:
                    try:
                        run = run_stage(spec.stage, inputs, cfg, store=store, output_name=spec.name, force=step in force)  # type: ignore[arg-type]
                    except SlmopsError as exc:
                        exc.what = f"{where} ({spec.stage}): {exc.what}"
                        raise
                    m = run.artifact.manifest
                    res = StepResult(step, spec.stage, "cached" if run.cached else "ran", time.perf_counter() - started, run.artifact,
                                     f"{spec.name}:{run.version}" if spec.name else None, m.metrics)
                    res.gates = check_step_gates(step, recipe, m.metrics, done, store)
            else:
                assert spec.action is not None
                if dry_run or target is None:
                    res = StepResult(step, spec.action, "planned", detail=f"{spec.action} {spec.alias or ''}".strip())
                else:
                    detail = get_action(spec.action)(spec, target, store)
                    res = StepResult(step, spec.action, "done", time.perf_counter() - started, target, detail=detail)
            done[step] = res
            results.append(res)
            if on_step:
                on_step(res)
            bar.advance(1, step=step)
    return results


def _plan(step: str, spec: StepSpec, inputs: dict[str, Artifact | None], cfg: dict[str, Any], store: Store) -> StepResult:
    assert spec.stage is not None
    if any(a is None for a in inputs.values()):
        waits = [r for r, a in inputs.items() if a is None]
        return StepResult(step, spec.stage, "planned", detail=f"will run (after {', '.join(waits)})")
    st = get_stage(spec.stage)
    key = cache_key(st, st.make_config(cfg), inputs)  # type: ignore[arg-type]
    hit = store.cached(key)
    if hit is not None:
        return StepResult(step, spec.stage, "cached", artifact=hit, name=spec.name, metrics=hit.manifest.metrics, detail="cached")
    return StepResult(step, spec.stage, "planned", detail="will run")
