"""Recipes: a YAML file of named steps, each a stage (or an action) with a config and inputs.

    name: quickstart
    vars: {n: 600}
    steps:
      data:    {stage: data.synth, config: {task: support-intent, n: "${vars.n}"}, name: qs-data}
      teacher: {stage: models.init, inputs: {data: "${data}"}, config: {arch: llama}}
      prod:    {action: alias, target: "${teacher}", alias: qs-teacher@prod}

An input is ``${step}`` (that step's output artifact), ``${step.FIELD}`` (the artifact whose digest
that step's output reports as the metric ``FIELD_digest``, e.g. ``${sweep.chosen}`` for the winner of
an ``optimize`` step) or any reference ``resolve_input`` accepts. Config strings and gates may use
``${vars.NAME}``; a config value that is exactly one ``${vars.NAME}`` keeps its type. A gate may
compare with a reference (``accuracy>=0.95*ref``): ``ref`` is the metrics of the step's ``ref:``
(``${step}`` or a reference, like an input), else of its ``ref`` input.
A step may declare ``resources: {cpus, gpus, memory}`` and the recipe ``executor: {exchange, remote}``
for ``--executor ray`` (:mod:`slmops.pipeline.ray_exec`). This module parses and checks a recipe
(strict schema, errors naming the step and field) and orders its steps; :mod:`slmops.pipeline.execute`
runs them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from slmops.errors import ConfigError
from slmops.pipeline.actions import action_config
from slmops.stage import all_stages
from slmops.units import parse_size

REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.-]*)\}")
ACTIONS = ("alias", "serve-smoke")


class Resources(BaseModel):
    """What one step needs from a Ray cluster (the local executor runs steps one by one and ignores it)."""

    model_config = ConfigDict(extra="forbid")
    cpus: float = Field(1.0, ge=0, description="CPU cores the step's Ray task reserves")
    gpus: float = Field(0.0, ge=0, description="GPUs the step's Ray task reserves (fractions share one)")
    memory: int | str | None = Field(None, description="Memory the step's Ray task reserves, e.g. 4GB (bytes when a number)")

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: int | str | None) -> int | None:
        if v is None:
            return None
        try:
            n = parse_size(v, flag="memory")
        except ConfigError as exc:
            raise ValueError(exc.message) from None
        if n <= 0:
            raise ValueError("memory must be positive")
        return n


class ExecutorSettings(BaseModel):
    """How ``--executor ray`` hands artifacts to its workers."""

    model_config = ConfigDict(extra="forbid")
    exchange: Literal["remote", "shared-fs"] = Field(
        "remote", description="remote: workers pull inputs from and upload outputs to the object-store remote; "
        "shared-fs: every worker sees this store's folder at the same path")
    remote: str | None = Field(None, description="Remote for exchange: remote (default: the store's default remote)")


class StepSpec(BaseModel):
    """One recipe step: a stage run through the cached runner, or an action."""

    model_config = ConfigDict(extra="forbid")
    stage: str | None = Field(None, description="Registered stage to run (see `slmops stages`)")
    action: Literal["alias", "serve-smoke"] | None = Field(None, description="A step that produces no artifact")
    description: str | None = Field(None, description="What the step is for (shown in --dry-run)")
    inputs: dict[str, str] = Field(default_factory=dict, description="Input role -> ${step} or a reference")
    config: dict[str, Any] = Field(default_factory=dict, description="The stage's config (validated against its schema)")
    name: str | None = Field(None, description="Register the output under this name (a new version when it changes)")
    gates: list[str] = Field(default_factory=list, description="Conditions on the output's metrics, e.g. 'accuracy>=0.9'; a failure stops the run")
    ref: str | None = Field(None, description="Whose metrics 'ref' in the gates means (${step} or a reference; default: the ref input)")
    target: str | None = Field(None, description="For actions: the artifact they act on (${step} or a reference)")
    alias: str | None = Field(None, description="For action alias: NAME@ALIAS to point at the target")
    resources: Resources = Field(default_factory=Resources, description="cpus/gpus/memory the step reserves on a Ray cluster")

    @model_validator(mode="after")
    def _one_kind(self) -> StepSpec:
        if (self.stage is None) == (self.action is None):
            raise ValueError("give exactly one of 'stage' or 'action'")
        if self.action == "alias" and (not self.alias or "@" not in self.alias or not self.target):
            raise ValueError("action alias needs 'target' and 'alias: NAME@ALIAS'")
        if self.action == "serve-smoke" and not self.target:
            raise ValueError("action serve-smoke needs 'target'")
        if self.ref is not None and self.stage is None:
            raise ValueError("'ref' is for a stage step's gates")
        return self

    def references(self) -> list[tuple[str, str]]:
        """``(role, ref)`` of everything the step reads: its inputs, its target and its gates' ``ref``."""
        return [*self.inputs.items(), *([("target", self.target)] if self.target else []), *([("ref", self.ref)] if self.ref else [])]

    def gate_ref(self) -> str | None:
        """What ``ref`` in the gates stands for: the ``ref:`` field, else the ``ref`` input."""
        return self.ref or self.inputs.get("ref")


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Recipe name (used in reports)")
    description: str = Field("", description="What the recipe does")
    vars: dict[str, Any] = Field(default_factory=dict, description="Values substituted for ${vars.NAME} in configs")
    steps: dict[str, StepSpec] = Field(description="Named steps; inputs decide the order")
    executor: ExecutorSettings = Field(default_factory=ExecutorSettings, description="Settings of --executor ray")
    source: str | None = Field(None, exclude=True, description="File the recipe came from")

    def deps(self, step: str) -> list[str]:
        """Steps that ``step`` takes inputs (or its target) from."""
        found = []
        for _role, ref in self.steps[step].references():
            m = REF.fullmatch(ref.strip())
            if m:
                found.append(split_ref(m.group(1), self.steps)[0])
        return found

    def order(self, until: str | None = None) -> list[str]:
        """Steps in dependency order (file order among independent steps); with ``until`` only what it needs."""
        wanted = set(self.steps) if until is None else self._closure(until)
        done: list[str] = []
        visiting: set[str] = set()

        def visit(s: str, path: tuple[str, ...]) -> None:
            if s in done:
                return
            if s in visiting:
                raise ConfigError(f"recipe {self.name} has a cycle", why=" -> ".join((*path, s)))
            visiting.add(s)
            for d in self.deps(s):
                visit(d, (*path, s))
            visiting.discard(s)
            done.append(s)

        for s in self.steps:
            if s in wanted:
                visit(s, ())
        return done

    def _closure(self, step: str) -> set[str]:
        if step not in self.steps:
            raise ConfigError(f"--until {step}: no such step", fix=f"steps are: {', '.join(self.steps)}")
        seen: set[str] = set()
        stack = [step]
        while stack:
            s = stack.pop()
            if s not in seen:
                seen.add(s)
                stack += self.deps(s)
        return seen


def split_ref(name: str, steps: Iterable[str]) -> tuple[str, str | None]:
    """``step`` or ``step.output`` -> ``(step, None)``; ``step.FIELD`` -> ``(step, FIELD)`` (see the module docstring)."""
    if name in steps:
        return name, None
    step, dot, field = name.rpartition(".")
    if not dot or not step:
        return name, None
    return step, None if field == "output" else field


def substitute_vars(value: Any, variables: dict[str, Any], where: str) -> Any:
    """Replace ``${vars.NAME}`` inside config values (recursively)."""
    if isinstance(value, dict):
        return {k: substitute_vars(v, variables, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_vars(v, variables, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def lookup(name: str) -> Any:
        if not name.startswith("vars."):
            raise ConfigError(f"{where}: ${{{name}}} is not allowed in a config", fix="configs may use ${vars.NAME}; artifacts go in inputs")
        key = name[5:]
        if key not in variables:
            raise ConfigError(f"{where}: ${{{name}}} is not defined", fix=f"add it under vars: (defined: {', '.join(variables) or 'none'})")
        return variables[key]

    whole = REF.fullmatch(value)
    if whole:
        return lookup(whole.group(1))
    return REF.sub(lambda m: str(lookup(m.group(1))), value)


def load_recipe(path: str | Path, *, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read, validate and check a recipe file; ``overrides`` replace ``vars`` (as ``--set n=100``)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"no recipe file {path}", fix="check the path (examples/ has samples)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML", why=str(exc).replace("\n", " ")) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping with name and steps")
    return parse_recipe(data, source=str(p), overrides=overrides)


def parse_recipe(data: dict[str, Any], *, source: str | None = None, overrides: dict[str, Any] | None = None) -> Recipe:
    where = source or "recipe"
    try:
        recipe = Recipe.model_validate({**data, "source": source})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = list(err["loc"])
            if len(loc) >= 2 and loc[0] == "steps":
                label = f"step {loc[1]!r}" + (f", field {'.'.join(map(str, loc[2:]))}" if len(loc) > 2 else "")
            else:
                label = ".".join(map(str, loc)) or "(top level)"
            problems.append(f"{label}: {'unknown field' if err['type'] == 'extra_forbidden' else err['msg']}")
        raise ConfigError(f"{where} is not a valid recipe", why="; ".join(problems)) from exc
    if overrides:
        unknown = set(overrides) - set(recipe.vars)
        if unknown:
            raise ConfigError(f"--set {', '.join(sorted(unknown))}: not a var of this recipe", fix=f"vars are: {', '.join(recipe.vars) or 'none'}")
        recipe.vars.update(overrides)
    check_recipe(recipe)
    return recipe


def check_recipe(recipe: Recipe) -> None:
    """Every stage exists, configs validate, inputs name real steps and roles, and there is no cycle."""
    stages = all_stages()
    for name, spec in recipe.steps.items():
        where = f"step {name!r}"
        for role, ref in spec.references():
            m = REF.fullmatch(ref.strip())
            if m and split_ref(m.group(1), recipe.steps)[0] not in recipe.steps:
                raise ConfigError(f"{where}, input {role}: {ref} names no step", fix=f"steps are: {', '.join(recipe.steps)}")
            if not m and "${" in ref:
                raise ConfigError(f"{where}, input {role}: {ref!r} is not ${{step}} or a reference")
        if spec.gates:
            from slmops.evaluate.gates import parse_gates

            try:
                relative = [g.text for g in parse_gates(substitute_vars(spec.gates, recipe.vars, f"{where}, gates")) if g.relative]
            except ConfigError as exc:
                raise ConfigError(f"{where}, gates: {exc.what}", why=exc.why, fix=exc.fix) from exc
            if relative and spec.gate_ref() is None:
                raise ConfigError(f"{where}, gates: {relative[0]!r} compares with ref, but the step names no reference",
                                  fix="add ref: ${STEP} (the step whose metrics ref means) to the step")
        if spec.stage is None:
            assert spec.action is not None
            action_config(spec.action, substitute_vars(spec.config, recipe.vars, f"{where}, config"), where)
            continue
        if spec.stage not in stages:
            raise ConfigError(f"{where}: unknown stage {spec.stage!r}", fix=f"stages are: {', '.join(stages)}")
        st = stages[spec.stage]
        bad = [r for r in spec.inputs if r not in st.inputs and r not in st.optional_inputs]
        missing = [r for r in st.inputs if r not in spec.inputs]
        if bad or missing:
            raise ConfigError(
                f"{where}: wrong inputs for {spec.stage}",
                why="; ".join(x for x in (f"unknown {', '.join(bad)}" if bad else "", f"missing {', '.join(missing)}" if missing else "") if x),
                fix=f"{spec.stage} takes {', '.join(st.inputs) or 'nothing'}" + (f" (optional {', '.join(st.optional_inputs)})" if st.optional_inputs else ""),
            )
        st.make_config(substitute_vars(spec.config, recipe.vars, f"{where}, config"), where=f"{where} ({spec.stage}) config")
    recipe.order()
