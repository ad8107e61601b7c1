"""The cached stage runner, with a real stage registered by the test."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, Field

from slmops.errors import ConfigError
from slmops.stage import StageContext, StageOutput, all_stages, stage
from slmops.stage.runner import run_stage
from slmops.store import Store

CALLS: list[str] = []


class ShoutConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    times: int = Field(1, ge=1, description="How often to repeat")
    suffix: str = Field("!", description="What to append")


@stage("test.shout", config=ShoutConfig, kind="dataset", format="text", optional_inputs=("data",))
def shout(inputs, cfg: ShoutConfig, ctx: StageContext) -> StageOutput:
    """Upper-case the input (or a fixed text) ``times`` times."""
    CALLS.append(cfg.suffix)
    text = (inputs["data"].path / "out.txt").read_text() if "data" in inputs else "hello"
    (ctx.out / "out.txt").write_text((text.upper() + cfg.suffix) * cfg.times)
    return StageOutput(metrics={"chars": len(text) * cfg.times})


@stage("test.fail", config=ShoutConfig, kind="dataset", format="text")
def fail(inputs, cfg, ctx: StageContext) -> None:
    """Always fails halfway through."""
    (ctx.out / "partial.txt").write_text("half")
    raise RuntimeError("stage blew up")


def test_miss_then_hit_then_force(store: Store) -> None:
    CALLS.clear()
    first = run_stage("test.shout", {}, {"times": 2}, store=store, output_name="shouty")
    assert not first.cached and first.version == 1
    assert (first.artifact.path / "out.txt").read_text() == "HELLO!HELLO!"
    assert first.artifact.manifest.stage.config == {"times": 2, "suffix": "!"}
    assert first.artifact.manifest.metrics == {"chars": 10}
    second = run_stage("test.shout", {}, {"times": 2}, store=store, output_name="shouty")
    assert second.cached and second.digest == first.digest and second.version == 1
    assert CALLS == ["!"], "a cache hit must not run the stage"
    run_stage("test.shout", {}, {"times": 2}, store=store, force=True)
    assert CALLS == ["!", "!"]
    third = run_stage("test.shout", {}, {"times": 3}, store=store)
    assert not third.cached and third.digest != first.digest


def test_lineage_and_input_digest_in_key(store: Store) -> None:
    base = run_stage("test.shout", {}, {}, store=store).artifact
    child = run_stage("test.shout", {"data": base}, {"suffix": "?"}, store=store)
    assert [(p.digest, p.role) for p in child.artifact.manifest.parents] == [(base.digest, "data")]
    assert store.parents(child.digest) == [(base.digest, "data")]
    other = run_stage("test.shout", {}, {"suffix": "."}, store=store).artifact
    assert not run_stage("test.shout", {"data": other}, {"suffix": "?"}, store=store).cached


def test_bad_config_names_the_field(store: Store) -> None:
    with pytest.raises(ConfigError) as exc:
        run_stage("test.shout", {}, {"times": 0, "colour": "red"}, store=store)
    assert "times" in exc.value.message and "colour: unknown field" in exc.value.message


def test_wrong_inputs_and_unknown_stage(store: Store) -> None:
    base = run_stage("test.shout", {}, {}, store=store).artifact
    with pytest.raises(ConfigError, match="unexpected model"):
        run_stage("test.shout", {"model": base}, {}, store=store)
    with pytest.raises(ConfigError, match="unknown stage"):
        run_stage("no.such.stage", {}, {}, store=store)


def test_failed_stage_leaves_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError):
        run_stage("test.fail", {}, {}, store=store)
    assert list(store.tmp.iterdir()) == []
    assert store.artifacts_list(named_only=False) == []


def test_builtin_stages_are_registered() -> None:
    names = set(all_stages())
    assert {"data.import", "models.init", "models.import"} <= names
