"""Hyper-parameter search over fine-tuning runs with optuna (random or TPE sampling).

The space is a mapping from config field to a distribution::

    learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    lora_rank:     {type: int, low: 2, high: 16, step: 2}
    batch_size:    {type: choice, choices: [4, 8]}
    packing:       [true, false]          # a bare list is a choice

Each trial is an ordinary ``finetune.*`` stage run (cached: a repeated trial is free, and every
trial leaves an artifact with lineage). The objective is a metric of the trial's artifact —
``val_loss`` (default, minimised), ``best_val_loss``, ``val_token_accuracy`` or ``val_exact_match``
(maximised; turns on ``eval_generate``). The best trial's artifact gets a version under ``name``
and the tag ``search-best``. Samplers are seeded, so the same search proposes the same trials.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from slmops import progress
from slmops._optional import require
from slmops.errors import ConfigError, SlmopsError
from slmops.finetune.config import CONFIGS, check_method
from slmops.stage import RunOptions
from slmops.store.artifact import Artifact
from slmops.store.registry import Store

log = logging.getLogger(__name__)

OBJECTIVES = {"val_loss": "minimize", "best_val_loss": "minimize", "val_token_accuracy": "maximize", "val_exact_match": "maximize"}
STRATEGIES = ("random", "tpe")
BEST_TAG = "search-best"


def load_space(space: Mapping[str, Any] | str | Path, method: str) -> dict[str, dict[str, Any]]:
    """Validate a search space (mapping or YAML file) against ``method``'s config fields."""
    where = "the search space"
    if not isinstance(space, Mapping):
        import yaml

        path = Path(space).expanduser()
        where = f"--space {path}"
        if not path.is_file():
            raise ConfigError(f"{where}: no such file", fix="write a YAML mapping of field: {type, low, high} (see docs/finetune.md)")
        try:
            space = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where} is not valid YAML", why=str(exc).splitlines()[0]) from exc
        if not isinstance(space, Mapping):
            raise ConfigError(f"{where} must be a mapping of field: distribution")
    fields = CONFIGS[check_method(method)].model_fields
    out: dict[str, dict[str, Any]] = {}
    for raw_key, spec in space.items():
        key = str(raw_key).replace("-", "_")
        if key not in fields:
            raise ConfigError(f"{where}: {key!r} is not a setting of --method {method}", fix=f"settings are: {', '.join(fields)}")
        if isinstance(spec, list):
            spec = {"type": "choice", "choices": spec}
        if not isinstance(spec, Mapping) or spec.get("type") not in ("float", "int", "choice"):
            raise ConfigError(f"{where}: {key} needs a type: float, int or choice", fix="e.g. {type: float, low: 1e-4, high: 1e-2, log: true}")
        spec = dict(spec)
        if spec["type"] == "choice":
            if not spec.get("choices"):
                raise ConfigError(f"{where}: {key} is a choice with no choices", fix="add choices: [a, b]")
        else:
            try:
                low, high = float(spec["low"]), float(spec["high"])
            except (KeyError, TypeError, ValueError):
                raise ConfigError(f"{where}: {key} needs numeric low and high") from None
            if not low < high:
                raise ConfigError(f"{where}: {key} has low {low:g} not below high {high:g}")
            if spec.get("log") and low <= 0:
                raise ConfigError(f"{where}: {key} is log-scaled, so low must be above 0")
        out[key] = spec
    if not out:
        raise ConfigError(f"{where} is empty", fix="give at least one field to search over")
    return out


def suggest(trial: Any, key: str, spec: Mapping[str, Any]) -> Any:
    if spec["type"] == "float":
        return trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False)))
    if spec["type"] == "int":
        step = int(spec.get("step", 1))
        return trial.suggest_int(key, int(spec["low"]), int(spec["high"]), step=step, log=bool(spec.get("log", False)))
    return trial.suggest_categorical(key, list(spec["choices"]))


def search(
    model: str | Artifact,
    data: str | Artifact,
    *,
    method: str = "lora",
    space: Mapping[str, Any] | str | Path,
    trials: int = 10,
    strategy: str = "tpe",
    objective: str = "val_loss",
    config: Mapping[str, Any] | None = None,
    options: RunOptions | Mapping[str, Any] | None = None,
    store: Store,
    name: str = "finetune-search",
    seed: int = 0,
) -> dict[str, Any]:
    """Run ``trials`` fine-tunes proposed by optuna; register and tag the best. Returns the results table."""
    from slmops.finetune.api import _model, finetune
    from slmops.stage.inputs import resolve_input

    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy {strategy} is not supported", fix=f"use {' or '.join(STRATEGIES)}")
    if objective not in OBJECTIVES:
        raise ConfigError(f"--objective {objective} is not a metric the search can optimise", fix=f"use one of {', '.join(OBJECTIVES)}")
    if trials < 1:
        raise ConfigError(f"--trials {trials} must be at least 1")
    dims = load_space(space, method)
    base_cfg = dict(config or {})
    clash = sorted(set(dims) & set(base_cfg))
    if clash:
        log.info("the search space overrides %s from the fixed config", ", ".join(clash))
    if objective == "val_exact_match":
        base_cfg["eval_generate"] = True
    optuna = require("optuna", extra="train", purpose="hyper-parameter search")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = _model(model, store)
    dataset = data if isinstance(data, Artifact) else resolve_input(data, store, kind="dataset")
    sampler = optuna.samplers.RandomSampler(seed=seed) if strategy == "random" else optuna.samplers.TPESampler(seed=seed)
    direction = OBJECTIVES[objective]
    study = optuna.create_study(direction=direction, sampler=sampler)
    rows: list[dict[str, Any]] = []

    def run_trial(trial: Any) -> float:
        params = {k: suggest(trial, k, spec) for k, spec in dims.items()}
        row: dict[str, Any] = {"trial": trial.number, "params": params, "value": None, "state": "running", "digest": None,
                               "cached": None, "error": None}
        rows.append(row)
        t0 = time.perf_counter()
        try:
            r = finetune(base, dataset, method=method, config={**base_cfg, **params}, options=options, store=store)
        except SlmopsError as exc:
            row.update(state="failed", error=exc.message, seconds=round(time.perf_counter() - t0, 2))
            log.warning("trial %d failed: %s", trial.number, exc.message)
            raise
        value = r.artifact.manifest.metrics.get(objective)
        row.update(digest=r.digest, cached=r.cached, seconds=round(time.perf_counter() - t0, 2),
                   metrics={k: r.artifact.manifest.metrics.get(k) for k in OBJECTIVES if r.artifact.manifest.metrics.get(k) is not None})
        if value is None:
            row.update(state="failed", error=f"the run reports no {objective}")
            raise ConfigError(f"trial {trial.number} reports no {objective}", why="it had no validation data",
                              fix="give the dataset a validation split or keep --validation-fraction above 0")
        row.update(value=float(value), state="complete")
        trial.set_user_attr("digest", r.digest)
        return float(value)

    with progress.task(f"search {method} ({strategy})", total=trials) as bar:
        def advance(study: Any, trial: Any) -> None:
            done = [r for r in rows if r["state"] == "complete"]
            best = (min if direction == "minimize" else max)((r["value"] for r in done), default=float("nan"))
            bar.advance(1, best=best)

        study.optimize(run_trial, n_trials=trials, catch=(SlmopsError,), callbacks=[advance])
    complete = [r for r in rows if r["state"] == "complete"]
    if not complete:
        first = next((r["error"] for r in rows if r["error"]), "unknown")
        raise ConfigError(f"all {trials} trial(s) failed", why=f"first error: {first}", fix="fix that, or narrow the search space")
    best_trial = study.best_trial
    best = next(r for r in rows if r["trial"] == best_trial.number)
    version = store.add_version(name, best["digest"])
    store.tag(best["digest"], BEST_TAG)
    for r in rows:
        r["best"] = r["trial"] == best["trial"]
    log.info("search: best trial %d (%s=%.4g) registered as %s:%d", best["trial"], objective, best["value"], name, version)
    return {
        "method": method, "strategy": strategy, "objective": objective, "direction": direction, "trials": rows,
        "best": {**best, "name": f"{name}:{version}", "tag": BEST_TAG},
        "space": {k: dict(v) for k, v in dims.items()}, "fixed": base_cfg,
    }
