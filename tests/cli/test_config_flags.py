"""Every stage config field is a CLI flag (or deliberately not, with a reason), and ``--help`` shows its description.

Walks the real ``slmops`` command tree: each command built by :func:`slmops.cli.flags.config_command`
(and ``slmops finetune``) says which configs its flags come from; every field of those configs must
be a click option of that command whose help in ``--help`` starts with the field's description.
Every registered stage must be reachable that way unless listed below with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer

from slmops.cli.flags import ConfigFlags, Flag, config_command, literal_choices
from slmops.cli.main import app
from slmops.stage import all_stages, get_stage

#: Stages no command exposes with their own flags, and why.
NOT_ON_THE_CLI = {
    "data.prose": "built inside recipes and `models shrink` (its default calibration text), never on its own",
    "models.import_gguf": "`models import FILE.gguf` runs it; its only settings are the path and where it came from",
}


def _commands() -> Iterator[tuple[str, Any]]:
    def walk(cmd: Any, path: list[str]) -> Iterator[tuple[str, Any]]:
        yield " ".join(path), cmd
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            yield from walk(sub, [*path, name])

    yield from walk(typer.main.get_command(app), [])


def _flagged() -> list[tuple[str, Any, list[ConfigFlags]]]:
    return [(path, cmd, specs) for path, cmd in _commands() if (specs := getattr(cmd.callback, "config_flags", None))]


def _fields(spec: ConfigFlags) -> Iterator[tuple[str, Any, str | None]]:
    for name, info in spec.config.model_fields.items():
        if name in spec.nested:
            for sub, sub_info in spec.nested[name].model_fields.items():
                yield sub, sub_info, name
        else:
            yield name, info, None


def _plain(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("│", " ").replace("\u00a0", " ")).strip()


def test_every_config_field_is_a_flag_with_its_description(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # one help line per option: descriptions are never wrapped
    flagged = _flagged()
    assert len(flagged) >= 25, [p for p, _, _ in flagged]
    for path, cmd, specs in flagged:
        options = {p.name: p for p in cmd.params}
        res = cli(*path.split(), "--help")
        assert res.code == 0, (path, res.err)
        shown = _plain(res.out)
        for spec in specs:
            if spec.stage is not None:
                assert get_stage(spec.stage).config is spec.config, (path, spec.stage)
            for name, info, into in _fields(spec):
                where = f"slmops {path}: {spec.config.__name__}.{name}"
                if name in spec.hidden:
                    assert len(spec.hidden[name]) > 10, f"{where} is hidden without a reason"
                    continue
                param = options.get(spec.param_name(name, into))
                assert param is not None, f"{where} has no flag"
                description = _plain((info.description or "").rstrip("."))
                assert description, f"{where} has no Field(description=...)"
                assert param.help.startswith(info.description.rstrip(".")), where
                assert description in shown, f"{where}: --help does not show {description!r}"
                assert any(opt in shown for opt in param.opts), where


def test_every_stage_with_a_config_is_on_the_cli() -> None:
    exposed = {spec.stage for _, _, specs in _flagged() for spec in specs}
    builtin = {name for name, st in all_stages().items() if st.fn.__module__.startswith("slmops.")}  # not the tests' own stages
    missing = sorted(builtin - exposed - set(NOT_ON_THE_CLI))
    assert not missing, f"stages with no command whose flags come from their config: {missing}"
    assert not set(NOT_ON_THE_CLI) & exposed, "a stage listed as not on the CLI now has a command: drop it from NOT_ON_THE_CLI"


def test_generated_flags_parse_and_keep_config_defaults(cli: Any) -> None:
    """A small command built here: flags become config values; what is not given is left to the config."""
    from typing import Literal

    from pydantic import BaseModel, ConfigDict, Field

    class Demo(BaseModel):
        model_config = ConfigDict(extra="forbid")
        size: Literal["tiny", "small"] = Field("tiny", description="How big")
        lengths: list[int] = Field(default_factory=lambda: [1, 2], description="Lengths to try")
        near: bool = Field(True, description="Also near duplicates")
        window_s: float = Field(60.0, description="Seconds to look back")
        hidden_one: str = Field("x", description="Not a flag")

    seen: list[dict[str, Any]] = []
    demo = typer.Typer()

    @config_command(demo, "go", config=Demo, flags={"near": Flag("--near/--exact-only"),
                                                    "window_s": Flag("--window", cli_type=str, parse=lambda v, f: float(v.rstrip("s")), unit="s")},
                    hidden={"hidden_one": "set by the command itself, for the test"})
    def go(label: str = "a", *, cfg: dict[str, Any]) -> None:
        seen.append({"label": label, **cfg})

    @demo.command("other")
    def other() -> None:  # a second command, so "go" stays a sub-command
        pass

    from typer.testing import CliRunner

    runner = CliRunner()
    assert runner.invoke(demo, ["go"]).exit_code == 0
    assert seen.pop() == {"label": "a"}  # nothing given: every value is the config's default
    res = runner.invoke(demo, ["go", "--size", "small", "--lengths", "4,8", "--exact-only", "--window", "30s"])
    assert res.exit_code == 0, res.output
    assert seen.pop() == {"label": "a", "size": "small", "lengths": [4, 8], "near": False, "window_s": 30.0}
    bad = runner.invoke(demo, ["go", "--size", "huge"])
    assert bad.exit_code != 0 and "--size huge is not supported" in str(bad.exception)
    bad = runner.invoke(demo, ["go", "--lengths", "4,x"])
    assert "--lengths '4,x' is not a list of whole numbers" in str(bad.exception)
    help_text = _plain(runner.invoke(demo, ["go", "--help"], env={"COLUMNS": "1000"}).output)
    assert "How big (one of tiny, small) (default: tiny)" in help_text
    assert "Seconds to look back (default: 60s)" in help_text and "--exact-only" in help_text
    assert "Not a flag" not in help_text
    with pytest.raises(ValueError, match="has no field"):
        ConfigFlags(Demo, hidden={"no_such_field": "a typo"})


def test_choices_come_from_one_place() -> None:
    """The GGUF qtypes and ONNX precisions offered by the CLI are the library's own lists."""
    from slmops.export.gguf_quantize import QTYPES
    from slmops.export.onnx import PRECISIONS, OnnxExportConfig

    helps = {(path, p.name): p.help for path, cmd, _ in _flagged() for p in cmd.params}
    assert "(one of " + ", ".join(QTYPES) + ")" in helps[("export gguf", "cfg__qtype")]
    precisions = literal_choices(OnnxExportConfig.model_fields["precision"].annotation)  # the config's Literal is the list
    assert set(precisions) == set(PRECISIONS) and all(p in helps[("export onnx", "cfg__precision")] for p in precisions)
    assert ", ".join(QTYPES) in helps[("export ollama", "gguf__qtype")]
