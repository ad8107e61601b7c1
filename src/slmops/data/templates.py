"""Prompt rendering and loss masks: chat templates, ``{field}`` text templates, training examples.

* :func:`render_chat` renders a model's own Jinja chat template in a **sandboxed** environment
  (``ImmutableSandboxedEnvironment`` with the helpers Hugging Face templates expect:
  ``raise_exception``, ``strftime_now``, ``tojson``, ``namespace``, ``{% generation %}``), in a
  worker process under a time, size and memory budget (:mod:`slmops.data.render_worker`). It needs
  no transformers, so every runtime (torch, ONNX Runtime GenAI, llama.cpp) renders prompts the same way.
* :func:`render_text_template` fills an Olive-style text template such as
  ``"### Question: {input}\\n### Answer: {output}"`` (``{{``/``}}`` are literal braces).
* :func:`slmops.data.examples.build_example` (in its own module) turns a chat (or a record of fields) into ``input_ids``/``labels`` where the
  labels are -100 everywhere except the tokens the model must learn to produce: every assistant
  turn plus the end-of-turn marker that follows it (chat), or the ``output`` part (text template).
  The mask is found by rendering incrementally (the prompt before each assistant turn vs the chat
  through it) and mapping character spans to tokens with the tokenizer's offsets, so it works for
  templates without ``{% generation %}`` blocks.

Tokenizers are used duck-typed (a Hugging Face *fast* tokenizer: ``__call__`` with
``return_offsets_mapping``, ``chat_template``, ``eos_token_id``); nothing heavy is imported here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import string
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from slmops.errors import ConfigError, DataError, SlmopsError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
EXAMPLE_TEXT_TEMPLATE = "### Question: {input}\n### Answer: {output}"

__all__ = [
    "EXAMPLE_TEXT_TEMPLATE",
    "IGNORE_INDEX",
    "ChatTemplateError",
    "chat_template_of",
    "fields_from_messages",
    "render_chat",
    "render_text_template",
    "special_token_kwargs",
    "template_problem",
    "text_template_fields",
]


# --------------------------------------------------------------------------- sandboxed chat templates


class TemplateRaised(TemplateError):
    """Raised by a template's own ``raise_exception(...)`` (it rejects the messages it was given)."""


class _GenerationTag(jinja2.ext.Extension):
    """Accept ``{% generation %}…{% endgeneration %}`` (HF's assistant-mask marker) and render its body."""

    tags = {"generation"}  # noqa: RUF012 - jinja2 declares it as a plain attribute

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return str(caller())


def _raise_exception(message: str) -> None:
    raise TemplateRaised(str(message))


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes HTML characters, which chat templates do not want.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """``dict(...)`` for templates without exposing the ``dict`` type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    """``namespace(...)`` that refuses underscore attributes (no reaching into CPython internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # same signature trick as jinja2's Namespace
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"chat templates may not set underscore attributes on a namespace ({name!r})")


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, failing loudly: touching an unsafe attribute raises at once
    (plain Jinja renders it as an empty string and only fails when it is used further)."""

    def unsafe_undefined(self, obj: Any, attribute: Any) -> Any:
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__} object is unsafe")


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _Namespace
    return env


@lru_cache(maxsize=64)
def _compile(template: str) -> jinja2.Template:
    try:
        return _environment().from_string(template)
    except TemplateSyntaxError as exc:
        raise ChatTemplateError(
            "the chat template does not parse",
            why=f"line {exc.lineno}: {exc.message}",
            fix="fix the template's Jinja syntax, or pass a {field} text template instead",
        ) from exc


def _plain(value: Any) -> Any:
    """Rebuild template inputs from plain JSON types, so no object with dangerous methods reaches Jinja."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump(exclude_none=True))
    if callable(getattr(value, "item", None)):  # numpy scalars
        try:
            return _plain(value.item())
        except (TypeError, ValueError):
            pass
    return f"<{type(value).__name__}>"


class ChatTemplateError(ConfigError):
    """The model's chat template itself is at fault: it does not parse, reaches for something unsafe, or fails to render."""


def render_chat(
    template: str,
    messages: Sequence[Any],
    *,
    add_generation_prompt: bool = False,
    bos_token: str | None = "",
    eos_token: str | None = "",
    **extra: Any,
) -> str:
    """Render ``messages`` (``{"role", "content"}`` dicts or objects) with a Jinja chat ``template``.

    Rendering happens in a sandbox, in a worker process, under a time, size and memory budget
    (:mod:`slmops.data.render_worker`; :func:`~slmops.data.render_worker.render_budget` sets it): a
    template that reaches for Python internals, does not parse or fails raises
    :class:`ChatTemplateError` (a :class:`ConfigError`); one that rejects the messages
    (``raise_exception``) raises :class:`DataError`; one past its budget raises
    :class:`~slmops.data.render_worker.TemplateBudgetExceeded`. ``extra`` reaches the template as
    variables (``tools``, ``documents``, ``enable_thinking``, other special tokens …); ``tools`` and
    ``documents`` default to None as in transformers.
    """
    from slmops.data.render_worker import render_bounded

    if not isinstance(template, str) or not template.strip():
        raise ConfigError("no chat template to render", fix="pass a {field} text template such as " + repr(EXAMPLE_TEXT_TEMPLATE))
    variables = {k: _plain(v) for k, v in extra.items()}
    variables.setdefault("tools", None)
    variables.setdefault("documents", None)
    variables["add_generation_prompt"] = bool(add_generation_prompt)
    variables["bos_token"] = bos_token or ""
    variables["eos_token"] = eos_token or ""
    return render_bounded(template, _plain(list(messages)), variables)


def _render_here(template: str, messages: list[Any], variables: dict[str, Any], *, max_chars: int | None = None) -> str:
    """Render in this process (what the worker process runs); ``max_chars`` caps the output as it is produced."""
    compiled = _compile(template)
    try:
        if max_chars is None:
            return compiled.render(messages=messages, **variables)
        parts: list[str] = []
        n = 0
        for chunk in compiled.generate(messages=messages, **variables):
            n += len(chunk)
            if n > max_chars:
                from slmops.data.render_worker import TemplateBudgetExceeded

                raise TemplateBudgetExceeded(f"the chat template rendered more than {max_chars:,} characters", limit="size")
            parts.append(chunk)
        return "".join(parts)
    except SecurityError as exc:
        raise ChatTemplateError(
            "the chat template tried an unsafe operation",
            why=str(exc),
            fix="use a trusted chat template; slmops renders templates in a sandbox that blocks access to Python internals",
        ) from exc
    except TemplateRaised as exc:
        raise DataError(
            "the chat template rejected these messages",
            why=str(exc),
            fix="check the roles and their order (many templates need user/assistant turns to alternate)",
        ) from exc
    except (MemoryError, SlmopsError):
        raise
    except Exception as exc:
        raise ChatTemplateError(
            "the chat template failed to render",
            why=f"{type(exc).__name__}: {exc}",
            fix="check the template against these messages, or pass a {field} text template",
        ) from exc


def template_problem(template: str) -> str | None:
    """Why ``template`` cannot be rendered safely on a plain chat (None when it can): for warnings at export time."""
    from slmops.data.render_worker import TemplateBudgetExceeded

    chat = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
    try:
        render_chat(template, chat, add_generation_prompt=True)
    except (ChatTemplateError, TemplateBudgetExceeded) as exc:
        return exc.message
    except (ConfigError, DataError):
        return None  # no template, or it rejects this particular chat: not a safety matter
    return None


def chat_template_of(tokenizer: Any, *, name: str | None = None, model: str | None = None) -> str:
    """The tokenizer's own chat template string; :class:`ConfigError` when it has none.

    Handles the forms transformers stores: a string, a ``{name: template}`` dict, or a list of
    ``{"name", "template"}`` entries (``name`` picks one; ``"default"`` otherwise).
    """
    tpl = getattr(tokenizer, "chat_template", None)
    if isinstance(tpl, list):
        tpl = {t.get("name"): t.get("template") for t in tpl if isinstance(t, Mapping)}
    if isinstance(tpl, Mapping):
        key = name or "default"
        if key not in tpl:
            if name is not None or len(tpl) != 1:
                raise ConfigError(
                    f"the tokenizer has no chat template named {key!r}",
                    why=f"it has {sorted(map(str, tpl))}",
                    fix="pick one of those names",
                )
            key = next(iter(tpl))
        tpl = tpl[key]
    if not isinstance(tpl, str) or not tpl.strip():
        who = f"model {model}" if model else "this model's tokenizer"
        raise ConfigError(
            f"{who} has no chat template",
            why="its tokenizer_config.json / chat_template.jinja defines none (base models often have none)",
            fix=f"pass a {{field}} text template instead, e.g. --text-template {EXAMPLE_TEXT_TEMPLATE!r}",
        )
    return tpl


def special_token_kwargs(tokenizer: Any) -> dict[str, str]:
    """Template variables for the tokenizer's special tokens (``bos_token``, ``eos_token``, …) as strings."""
    out: dict[str, str] = {}
    stm = getattr(tokenizer, "special_tokens_map", None) or {}
    for key, value in dict(stm).items():
        if isinstance(value, str):
            out[key] = value
        elif value is not None and not isinstance(value, list | tuple):
            out[key] = str(value)
    for key in ("bos_token", "eos_token"):
        value = getattr(tokenizer, key, None)
        if key not in out and value is not None:
            out[key] = str(value)
    return out


# --------------------------------------------------------------------------- {field} text templates


@lru_cache(maxsize=64)
def _parse_text_template(template: str) -> tuple[tuple[str, str | None, str | None, str | None], ...]:
    try:
        parts = tuple(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(
            f"the text template {template!r} does not parse",
            why=str(exc),
            fix="name every field like {input}; write literal braces as {{ and }}",
        ) from exc
    for _, name, _, _ in parts:
        if name is not None and not name.isidentifier():
            raise ConfigError(
                f"the text template {template!r} has a field {{{name}}} slmops cannot fill",
                why="fields must be plain names (no positions, attributes or indexes)",
                fix="use names such as {input} and {output}; write literal braces as {{ and }}",
            )
    return parts


def text_template_fields(template: str) -> list[str]:
    """The field names a text template uses, in order of first appearance."""
    seen: list[str] = []
    for _, name, _, _ in _parse_text_template(template):
        if name is not None and name not in seen:
            seen.append(name)
    return seen


def _render_text(template: str, fields: Mapping[str, Any], *, record: Any = None) -> tuple[str, dict[str, list[tuple[int, int]]]]:
    out: list[str] = []
    spans: dict[str, list[tuple[int, int]]] = {}
    pos = 0
    for literal, name, spec, conversion in _parse_text_template(template):
        out.append(literal)
        pos += len(literal)
        if name is None:
            continue
        if name not in fields or fields[name] is None:
            where = f"record {record}" if record is not None else "the record"
            raise DataError(
                f"{where} has no field {name!r}, which the text template uses",
                why=f"its fields are {sorted(map(str, fields))}",
                fix=f"add {name!r} to every record, or change the text template {template!r}",
            )
        value = fields[name]
        if conversion == "r":
            value = repr(value)
        elif conversion == "a":
            value = ascii(value)
        try:
            text = format(value, spec or "")
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"cannot format field {name!r} with {spec!r}", why=str(exc)) from exc
        spans.setdefault(name, []).append((pos, pos + len(text)))
        out.append(text)
        pos += len(text)
    return "".join(out), spans


def render_text_template(template: str, record_fields: Mapping[str, Any], *, record: Any = None) -> str:
    """Fill a ``{field}`` text template from a record's fields (``record`` names it in errors)."""
    return _render_text(template, record_fields, record=record)[0]


def fields_from_messages(messages: Sequence[Any], *, record: Any = None) -> dict[str, str]:
    """``system``/``input``/``output`` fields from a single-turn chat, so text templates work on chats."""
    msgs = [_message(m, record=record) for m in messages]
    system = [m["content"] for m in msgs if m["role"] == "system"]
    users = [m["content"] for m in msgs if m["role"] == "user"]
    assistants = [m["content"] for m in msgs if m["role"] == "assistant"]
    where = f"record {record}" if record is not None else "the record"
    if len(users) > 1 or len(assistants) > 1:
        raise DataError(
            f"{where} is a multi-turn chat",
            why="a text template has one {input} and one {output}",
            fix="use the model's chat template (drop the text template) for multi-turn data",
        )
    fields: dict[str, str] = {}
    if system:
        fields["system"] = "\n".join(system)
    if users:
        fields["input"] = users[0]
    if assistants:
        fields["output"] = assistants[0]
    return fields

def _message(m: Any, *, record: Any = None) -> dict[str, Any]:
    if isinstance(m, Mapping):
        d = dict(m)
    elif callable(getattr(m, "model_dump", None)):
        d = m.model_dump(exclude_none=True)
    elif dataclasses.is_dataclass(m) and not isinstance(m, type):
        d = dataclasses.asdict(m)
    else:
        d = {"role": getattr(m, "role", None), "content": getattr(m, "content", None)}
    if not isinstance(d.get("role"), str):
        where = f"record {record}" if record is not None else "a record"
        raise DataError(f"{where} has a message without a role", why=f"got {m!r:.80}", fix="every message needs role and content")
    if d.get("content") is None:
        d["content"] = ""
    return d


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    return str(content)

