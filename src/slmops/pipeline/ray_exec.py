"""``slmops run RECIPE --executor ray``: recipe steps as Ray tasks, independent branches at once.

The driver (this process) walks the DAG exactly as the local executor does: it resolves inputs,
computes each step's cache key and takes cache hits itself; gates, ``--until``, ``--force`` and
actions run here too. A step that must run becomes one Ray task with the resources the recipe
declares (``resources: {cpus, gpus, memory}``) as soon as the steps it needs are done, so
independent branches run in parallel. The task (:mod:`slmops.pipeline.ray_worker`) returns files
and metrics; only the driver commits to the registry, so the SQLite index never has writers on
several machines. Ray retries a task whose worker died; a killed driver leaves committed steps
cached, and the next run resumes after them. Ray is imported only when this executor runs.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from slmops import progress
from slmops._optional import require
from slmops.errors import SlmopsError
from slmops.pipeline.actions import get_action
from slmops.pipeline.execute import StepResult, _input, check_step_gates
from slmops.pipeline.recipe import Recipe, StepSpec, substitute_vars
from slmops.stage import Stage, StageOutput
from slmops.stage.runner import RunResult, cache_hit, commit_output, prepare_stage
from slmops.store.artifact import Artifact
from slmops.store.registry import Store
from slmops.store.staging import owned_dir

log = logging.getLogger(__name__)
MAX_RETRIES = 3  # attempts after a worker dies mid-step


@dataclass
class _Running:
    step: str
    st: Stage
    cfg: BaseModel
    key: str
    inputs: dict[str, Artifact]
    started: float
    out: Any = None  # shared-fs: the temp dir the worker writes into ...
    owner: Any = None  # ... owned by the driver while the step runs (gc leaves it alone)


def connect(address: str | None = None) -> Any:
    """Connect to the Ray cluster at ``address`` (or ``RAY_ADDRESS``; none: start a local one) unless connected."""
    ray = require("ray", extra="scale", purpose="--executor ray")
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise SlmopsError(f"cannot connect to the Ray cluster at {address or os.environ.get('RAY_ADDRESS') or 'a new local cluster'}",
                              why=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                              fix="check --address (ray://HOST:10001 or HOST:6379) and that `ray status` works there") from exc
    return ray


def _exchange(recipe: Recipe, store: Store) -> dict[str, Any]:
    if recipe.executor.exchange == "shared-fs":
        return {"mode": "shared-fs", "home": str(store.home)}
    from slmops.store.remotes import get_remote

    try:
        spec = get_remote(store, recipe.executor.remote)
    except SlmopsError as exc:
        raise type(exc)(f"--executor ray: {exc.what}", why="workers exchange artifacts through an object-store remote",
                        fix="add a remote with `slmops store remote add NAME s3://BUCKET/PREFIX`, or set `executor: {exchange: shared-fs}` "
                        "in the recipe when every worker sees this store's folder at the same path") from exc
    return {"mode": "remote", "remote": spec.to_dict()}


def _options(spec: StepSpec) -> dict[str, Any]:
    r = spec.resources
    opts: dict[str, Any] = {"num_cpus": r.cpus, "num_gpus": r.gpus, "max_retries": MAX_RETRIES, "retry_exceptions": False}
    if r.memory:
        opts["memory"] = r.memory
    return opts


def run_recipe_ray(
    recipe: Recipe,
    *,
    store: Store,
    force: set[str],
    until: str | None,
    on_step: Callable[[StepResult], None] | None,
    address: str | None = None,
) -> list[StepResult]:
    """Run ``recipe`` on a Ray cluster; results come back in the local executor's order."""
    from slmops.pipeline.ray_worker import run_step

    ray = connect(address)
    exchange = _exchange(recipe, store)
    objects = None
    if exchange["mode"] == "remote":
        from slmops.store.sync import open_remote

        objects = open_remote(store, recipe.executor.remote)
    task = ray.remote(run_step)
    order = recipe.order(until)
    remaining = list(order)
    done: dict[str, StepResult] = {}
    running: dict[Any, _Running] = {}
    failure: BaseException | None = None

    def finish(res: StepResult) -> None:
        done[res.step] = res
        if on_step:
            on_step(res)
        bar.advance(1, step=res.step)

    with progress.task(f"recipe {recipe.name} (ray)", total=len(order)) as bar:
        try:
            while remaining or running:
                # start (or take from the cache) every step whose inputs are done, in file order
                while failure is None:
                    ready = [s for s in remaining if all(d in done for d in recipe.deps(s))]
                    if not ready:
                        break
                    step = ready[0]
                    remaining.remove(step)
                    try:
                        res = _start(step, recipe, store, done, force, exchange, objects, task, running)
                    except SlmopsError as exc:
                        failure = exc
                        break
                    if res is not None:
                        finish(res)
                if not running:
                    break
                [ref], _ = ray.wait(list(running), num_returns=1)
                r = running.pop(ref)
                try:
                    fields = _get(ray, ref, r)
                    res = _commit(r, fields, recipe, store, objects, done)
                except Exception as exc:  # noqa: BLE001 - let the other steps finish and commit, then raise
                    _cleanup(r)
                    if failure is None:
                        failure = exc
                    continue
                finish(res)
        finally:  # interrupted (Ctrl-C, a kill of the driver's loop): stop what still runs; committed steps stay cached
            for ref in running:
                ray.cancel(ref, force=True)
            if running:  # let the killed workers go before removing their folders (a late mkdir would survive)
                ray.wait(list(running), num_returns=len(running), timeout=30)
            for r in running.values():
                _cleanup(r)
    if failure is not None:
        raise failure
    return [done[s] for s in order]


def _start(step: str, recipe: Recipe, store: Store, done: dict[str, StepResult], force: set[str], exchange: dict[str, Any],
           objects: Any, task: Any, running: dict[Any, _Running]) -> StepResult | None:
    """Take a step from the cache, run an action, or submit a Ray task (then None)."""
    spec = recipe.steps[step]
    where = f"step {step!r}"
    started = time.perf_counter()
    inputs = {role: _input(ref, done, store, f"{where}, input {role}", recipe.steps) for role, ref in spec.inputs.items()}
    if spec.stage is None:
        assert spec.action is not None and spec.target is not None
        target = _input(spec.target, done, store, f"{where}, target", recipe.steps)
        assert target is not None
        detail = get_action(spec.action)(spec, target, store)
        return StepResult(step, spec.action, "done", time.perf_counter() - started, target, detail=detail)
    cfg_data = substitute_vars(spec.config, recipe.vars, f"{where}, config")
    try:
        st, cfg, key = prepare_stage(spec.stage, inputs, cfg_data)  # type: ignore[arg-type]
        hit = None if step in force else cache_hit(store, st, key, spec.name)
    except SlmopsError as exc:
        exc.what = f"{where} ({spec.stage}): {exc.what}"
        raise
    if hit is not None:
        return _result(step, recipe, hit, started, done, store)
    ins = {role: a.digest for role, a in inputs.items() if a is not None}
    r = _Running(step, st, cfg, key, inputs, started)  # type: ignore[arg-type]
    ex = dict(exchange)
    if exchange["mode"] == "shared-fs":
        r.owner = owned_dir(store.tmp, f"{os.getpid()}-ray-{uuid.uuid4().hex[:12]}")
        r.out = r.owner.__enter__()
        ex["out"] = str(r.out)
    else:
        from slmops.store.sync import TransferReport, ensure_on_remote

        report = TransferReport("push", objects.spec.name, step, "")
        for digest in ins.values():
            ensure_on_remote(store, objects, digest, report)
    ref = task.options(name=f"slmops:{recipe.name}:{step}", **_options(spec)).remote(st.name, st.version, cfg, ins, ex)
    running[ref] = r
    log.info("%s: submitted to Ray", where)
    return None


def ray_get(ray: Any, ref: Any, where: str) -> Any:
    """``ray.get(ref)``, except that an SlmopsError raised remotely comes back as itself, prefixed with ``where``."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else None
        if isinstance(cause, SlmopsError):
            raise type(cause)(f"{where}: {cause.what}", why=cause.why, fix=cause.fix) from None
        raise


def _get(ray: Any, ref: Any, r: _Running) -> dict[str, Any]:
    """The task's result; a stage's own SlmopsError comes back as itself, naming the step."""
    try:
        return ray_get(ray, ref, f"step {r.step!r} ({r.st.name})")
    except ray.exceptions.WorkerCrashedError as exc:
        raise SlmopsError(f"step {r.step!r} ({r.st.name}): its worker died {MAX_RETRIES + 1} times", why=str(exc).splitlines()[0],
                          fix="check the worker's memory (resources: memory) and logs; re-running resumes after the committed steps") from exc


def _commit(r: _Running, fields: dict[str, Any], recipe: Recipe, store: Store, objects: Any, done: dict[str, StepResult]) -> StepResult:
    spec = recipe.steps[r.step]
    out = StageOutput(metrics=fields["metrics"], meta=fields["meta"], kind=fields["kind"], format=fields["format"])
    if r.out is not None:
        run = commit_output(store, r.st, r.cfg, r.key, r.inputs, r.out, out, spec.name)
        _cleanup(r)  # the folder was renamed into the store: this only lets go of it
    else:
        from slmops.store.sync import TransferReport, download_tree

        with store.staging() as tmp:
            download_tree(objects, fields["files"], tmp, TransferReport("pull", objects.spec.name, r.step, ""))
            run = commit_output(store, r.st, r.cfg, r.key, r.inputs, tmp, out, spec.name)
    log.info("step %r ran on %s (pid %s)", r.step, fields.get("node"), fields.get("pid"))
    return _result(r.step, recipe, run, r.started, done, store)


def _result(step: str, recipe: Recipe, run: RunResult, started: float, done: dict[str, StepResult], store: Store) -> StepResult:
    spec, m = recipe.steps[step], run.artifact.manifest
    res = StepResult(step, spec.stage or "", "cached" if run.cached else "ran", time.perf_counter() - started, run.artifact,
                     f"{spec.name}:{run.version}" if spec.name else None, m.metrics)
    res.gates = check_step_gates(step, recipe, m.metrics, done, store)
    return res


def _cleanup(r: _Running) -> None:
    if r.owner is not None:
        owner, r.owner = r.owner, None
        owner.__exit__(None, None, None)  # removes what is left of the folder and drops the ownership
