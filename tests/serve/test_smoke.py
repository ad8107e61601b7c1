"""The ``serve-smoke`` recipe action: registered by the server package, explicit config, a real server answering."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmops.errors import ConfigError
from slmops.pipeline.actions import get_action
from slmops.pipeline.recipe import StepSpec


def test_unknown_config_keys_are_refused() -> None:
    spec = StepSpec(action="serve-smoke", target="bot", config={"modle": "bot"})
    with pytest.raises(ConfigError, match="modle"):
        get_action("serve-smoke")(spec, None, None)  # type: ignore[arg-type]  # refused before the target is touched
    with pytest.raises(ConfigError, match="unknown action"):
        get_action("serve-smokes")


def test_a_recipe_with_a_bad_action_config_is_refused_before_anything_runs() -> None:
    from slmops.pipeline.recipe import parse_recipe

    steps = {"x": {"action": "serve-smoke", "target": "bot", "config": {"max_tokens": 0}}}
    with pytest.raises(ConfigError, match="step 'x', config: max_tokens"):
        parse_recipe({"name": "bad", "steps": steps})
    steps = {"x": {"action": "alias", "target": "bot", "alias": "bot@a", "config": {"model": "m"}}}
    with pytest.raises(ConfigError, match="takes no config"):
        parse_recipe({"name": "bad", "steps": steps})
    ok = {"x": {"action": "serve-smoke", "target": "bot", "config": {"model": "bot", "prompt": "hi", "max_tokens": 8}}}
    assert parse_recipe({"name": "ok", "steps": ok}).order() == ["x"]


def test_the_action_serves_the_target_and_asks_one_question(serve_home: Path) -> None:
    from slmops.store import Store
    from slmops.store.refs import resolve

    with Store(serve_home) as store:
        target = resolve("bot:1", store)
        spec = StepSpec(action="serve-smoke", target="bot:1", config={"model": "bot:1", "prompt": "Hello?", "max_tokens": 2})
        detail = get_action("serve-smoke")(spec, target, store)
    assert detail.startswith("served bot:1 at http://127.0.0.1:") and "'Hello?' ->" in detail and "(2 tokens)" in detail
