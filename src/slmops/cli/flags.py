"""Command-line flags generated from a stage's pydantic config, so the CLI cannot drift from the library.

Every field of a stage config becomes a flag: its ``Field(description=…)`` is the flag's help, its
default is shown from the config (``(default: X)``), and the choices of a ``Literal`` field are listed
from the ``Literal`` itself (or from ``Flag(choices=…)`` when the config validates against a table,
such as GGUF's qtypes). A command declares only what differs from that: other flag names (``--qtype``
``-q``), a parser for text the CLI accepts (``300s``, ``1,2,4``, a JSON file), a CLI default, or a
field deliberately not exposed (with the reason, which ``tests/cli/test_config_flags.py`` checks).

    @config_command(app, "dedup", stage="data.dedup", config=DedupConfig, flags={"near": Flag("--near/--exact-only")})
    def dedup(data: Annotated[str, typer.Argument(...)], name: NameOpt = None, *, cfg: dict[str, Any]) -> None:
        ...run_stage("data.dedup", inputs, cfg, ...)

The decorated function gets ``cfg``: only the flags the user gave (plus CLI defaults), so everything
else keeps the config's default and the cache key does not depend on how a value was spelled.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from slmops.errors import ConfigError

UNSET: Any = object()


@dataclass(frozen=True)
class Flag:
    """How one config field differs on the command line from what the field itself says (all optional)."""

    names: tuple[str, ...] = ()  # e.g. ("--qtype", "-q"); default --field-name (and --no-field-name for a bool)
    parse: Callable[[Any, str], Any] | None = None  # (CLI value, flag name) -> config value
    cli_type: Any = None  # the type the CLI reads when it is not the field's (str for "300s", Path for a JSON file)
    default: Any = UNSET  # a CLI default that differs from the config's (always passed)
    note: str = ""  # words added after the description (units the CLI accepts, what the file holds)
    choices: Sequence[Any] | None = None  # allowed values when the field is not a Literal (shown in the help)
    multiple: bool = False  # a list given by repeating the flag instead of comma-separated
    default_text: str | None = None  # what the help says the default is, when the stage fills it in (e.g. per method)
    unit: str = ""  # shown after a numeric default, when the flag reads units (a duration: "s")

    def __init__(self, *names: str, **kw: Any) -> None:
        object.__setattr__(self, "names", names)
        defaults = {"parse": None, "cli_type": None, "default": UNSET, "note": "", "choices": None, "multiple": False, "default_text": None,
                    "unit": ""}
        for key, value in {**defaults, **kw}.items():
            object.__setattr__(self, key, value)


def _members(annotation: Any) -> list[Any]:
    """The non-None members of an ``X | None`` annotation."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def literal_choices(annotation: Any) -> tuple[Any, ...]:
    """The values of a ``Literal`` field (``Literal[...] | None`` too); empty when it is not one."""
    base = _members(annotation)[0]
    return typing.get_args(base) if typing.get_origin(base) is Literal else ()


def cli_type(annotation: Any) -> tuple[Any, str]:
    """(python type of the flag, help words about the form) for a pydantic annotation."""
    members = _members(annotation)
    base = members[0] if members else annotation
    if typing.get_origin(base) is Literal:
        values = typing.get_args(base)
        return (type(values[0]) if values and isinstance(values[0], int | float) else str), "one of " + ", ".join(map(str, values))
    if typing.get_origin(base) is list:
        return str, "comma-separated"
    if base in (bool, int, float, str):
        return base, ""
    return str, ""


def show(value: Any) -> str:
    """A default as the user would type it."""
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def default_note(text: str) -> str:
    """`` (default: X)`` for a help text; the space after the colon does not break, so X never stands alone on a line."""
    return f" (default:\u00a0{text})"


def default_of(info: FieldInfo) -> Any:
    """A field's default (None for a required field)."""
    return None if info.is_required() else info.get_default(call_default_factory=True)


def option(pname: str, typ: Any, decls: Sequence[str], help_: str, *, default: Any = None, panel: str | None = None) -> inspect.Parameter:
    """A keyword-only typer option parameter (the building block of every generated flag)."""
    opt = typer.Option(*decls, help=help_, rich_help_panel=panel, show_default=False)
    return inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[typ, opt])


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def split_csv(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def csv_ints(text: str | None, flag: str) -> list[int] | None:
    """``"1,2,4"`` as whole numbers; None stays None."""
    if text is None:
        return None
    try:
        return [int(x) for x in split_csv(text)]
    except ValueError as exc:
        raise ConfigError(f"{flag} {text!r} is not a list of whole numbers", fix=f"e.g. {flag} 1,2,4,8") from exc


def read_json_file(path: Path | None, flag: str) -> Any:
    """A JSON (or, by suffix, YAML) file a flag names; a ConfigError naming the flag when it cannot be read."""
    if path is None:
        return None
    yaml_file = path.suffix in (".yaml", ".yml")
    try:
        text = path.expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot read it", why=exc.strerror) from exc
    try:
        if yaml_file:
            import yaml

            return yaml.safe_load(text)
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{flag} {path} is not valid {'YAML' if yaml_file else 'JSON'}", why=str(exc)) from exc


def parse_duration(text: str, flag: str) -> float:
    """``"300s"``, ``"5m"``, ``"1h"`` as seconds (an error naming the flag)."""
    from slmops.units import parse_duration as seconds

    return seconds(text, flag=flag)


def yaml_value(text: str) -> Any:
    """A ``--set`` value read as YAML (``null``, ``[a, b]``, ``0.1``; anything else a string)."""
    import yaml

    return yaml.safe_load(text)


def parse_pairs(items: list[str] | None, flag: str, example: str, value: Callable[[str], Any] = str, *,
                form: str = "KEY=VALUE", fields: bool = False) -> dict[str, Any]:
    """Repeated ``KEY=VALUE`` flags as a mapping (``value`` converts each value; ``fields``: dashes in keys become underscores)."""
    result: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or (form == "SOURCE=TARGET" and not text):
            raise ConfigError(f"{flag} {item!r} is not {form}", fix=f"e.g. {flag} {example}")
        result[key.strip().replace("-", "_") if fields else key.strip()] = value(text)
    return result


def help_text(info: FieldInfo, spec: Flag | None = None) -> str:
    """A flag's help: the field's description, the form the CLI reads (choices, comma-separated …), the default."""
    spec = spec or Flag()
    form = cli_type(info.annotation)[1]
    text = (info.description or "").rstrip(".")
    if spec.choices is not None:
        form = "one of " + ", ".join(map(str, spec.choices))
    elif spec.multiple and form == "comma-separated":
        form = "repeatable"
    elif spec.parse is not None and form == "comma-separated":
        form = ""
    if form.startswith("one of ") and all(c in text for c in form.removeprefix("one of ").split(", ")):
        form = ""  # the description already names every choice
    for extra in (spec.note, form):
        if extra and extra not in text:
            text += f" ({extra})"
    default = spec.default if spec.default is not UNSET else default_of(info)
    if spec.default_text is not None:
        text += default_note(spec.default_text)
    elif default is True:
        text += default_note("on")
    elif default is not None and default is not False and default not in ("", [], {}):
        text += default_note(f"{default:g}{spec.unit}" if spec.unit and isinstance(default, int | float) else show(default))
    return text


@dataclass
class ConfigFlags:
    """The flags of one stage config: which fields are flags, under which names, and which are not exposed (and why)."""

    config: type[BaseModel]
    stage: str | None = None
    flags: dict[str, Flag] = field(default_factory=dict)
    hidden: dict[str, str] = field(default_factory=dict)  # field -> why it is not a flag (set from an argument, an input…)
    nested: dict[str, type[BaseModel]] = field(default_factory=dict)  # field -> model whose fields are flags too
    panel: str | None = None
    prefix: str = "cfg__"
    only: tuple[str, ...] | None = None  # expose just these fields (the stage runs inside another command) …
    only_why: str = ""  # … and why the others are not flags here

    def __post_init__(self) -> None:
        known = {*self.config.model_fields, *(f for m in self.nested.values() for f in m.model_fields)}
        if self.only is not None:
            self.hidden = {**{f: self.only_why for f in self.config.model_fields if f not in self.only}, **self.hidden}
        unknown = sorted((set(self.hidden) | set(self.only or ())) - known)
        if unknown:  # a typo here would silently expose a field (``flags`` may be a table shared by several configs)
            raise ValueError(f"{self.config.__name__} has no field(s) {', '.join(unknown)}")

    def fields(self) -> Iterator[tuple[str, FieldInfo, str | None]]:
        """(field, info, the nested field it belongs to) of every exposed field."""
        for name, info in self.config.model_fields.items():
            if name in self.nested:
                for sub, sub_info in self.nested[name].model_fields.items():
                    if sub not in self.hidden:
                        yield sub, sub_info, name
            elif name not in self.hidden:
                yield name, info, None

    def param_name(self, name: str, into: str | None = None) -> str:
        return f"{self.prefix}{into + '__' if into else ''}{name}"

    def help_for(self, name: str, info: FieldInfo) -> str:
        return help_text(info, self.flags.get(name, Flag()))

    def params(self) -> list[inspect.Parameter]:
        params = []
        for name, info, into in self.fields():
            spec = self.flags.get(name, Flag())
            typ, _ = cli_type(info.annotation)
            if spec.cli_type is not None:
                typ = spec.cli_type
            elif spec.multiple:
                typ = list[str]
            decls = spec.names or ((f"{flag_name(name)}/--no-{name.replace('_', '-')}",) if typ is bool else (flag_name(name),))
            required = info.is_required() and spec.default is UNSET  # e.g. the weights of `adapters combine`
            default = inspect.Parameter.empty if required else None if spec.default is UNSET else spec.default
            annotation = typ if required or (spec.default is not UNSET and default is not None) else typ | None
            params.append(option(self.param_name(name, into), annotation, decls, self.help_for(name, info), default=default, panel=self.panel))
        return params

    def take(self, kw: dict[str, Any]) -> dict[str, Any]:
        """Pop this config's flags from a command's keyword arguments; the config values the user gave."""
        cfg: dict[str, Any] = {}
        for name, info, into in self.fields():
            value = kw.pop(self.param_name(name, into))
            if value is None or (isinstance(value, list | tuple) and not value):
                continue
            spec = self.flags.get(name, Flag())
            where = (spec.names[0].split("/")[0] if spec.names else flag_name(name))
            if spec.parse is not None:
                value = spec.parse(value, where)
            choices = spec.choices if spec.choices is not None else literal_choices(info.annotation)
            if choices and value not in choices:
                raise ConfigError(f"{where} {value} is not supported" + (f" by {self.stage}" if self.stage else ""),
                                  fix=f"use one of {', '.join(map(str, choices))}")
            if isinstance(value, str) and typing.get_origin(_members(info.annotation)[0]) is list:
                value = csv_ints(value, where) if typing.get_args(_members(info.annotation)[0]) == (int,) else split_csv(value)
            (cfg.setdefault(into, {}) if into else cfg)[name] = value
        return cfg


def config_command(app: typer.Typer, name: str | None = None, *, config: type[BaseModel], stage: str | None = None,
                   flags: dict[str, Flag] | None = None, hidden: dict[str, str] | None = None,
                   nested: dict[str, type[BaseModel]] | None = None, panel: str | None = "Settings",
                   only: tuple[str, ...] | None = None, only_why: str = "", more: dict[str, ConfigFlags] | None = None,
                   **command_kw: Any,
                   ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` as a command whose options are ``fn``'s own parameters plus one flag per config field.

    ``fn`` takes a keyword ``cfg``: the config values given on the command line; and one keyword per
    entry of ``more`` (the flags of another stage the command runs first, e.g. the GGUF export under ``export ollama``).
    """
    spec = ConfigFlags(config, stage, dict(flags or {}), dict(hidden or {}), dict(nested or {}), panel, only=only, only_why=only_why)
    specs = {"cfg": spec, **(more or {})}

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(fn, include_extras=True)
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints[p.name])
               for p in inspect.signature(fn).parameters.values() if p.name not in specs]
        params = own + [p for s in specs.values() for p in s.params()]

        def command(**kw: Any) -> Any:
            given = {key: s.take(kw) for key, s in specs.items()}  # pops the generated flags from kw
            return fn(**kw, **given)

        command.__name__, command.__qualname__, command.__doc__, command.__module__ = fn.__name__, fn.__qualname__, fn.__doc__, fn.__module__
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.config_flags = list(specs.values())  # type: ignore[attr-defined]  # read by tests/cli/test_config_flags.py
        app.command(name, **command_kw)(command)
        return fn

    return deco
