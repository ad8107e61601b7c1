"""Prompt rendering and loss masks: chat templates, ``{field}`` text templates, training examples.

* :func:`render_chat` renders a model's own Jinja chat template in a **sandboxed** environment
  (``ImmutableSandboxedEnvironment`` with the helpers Hugging Face templates expect:
  ``raise_exception``, ``strftime_now``, ``tojson``, ``namespace``, ``{% generation %}``). It needs
  no transformers, so every runtime (torch, ONNX Runtime GenAI, llama.cpp) renders prompts the same way.
* :func:`render_text_template` fills an Olive-style text template such as
  ``"### Question: {input}\\n### Answer: {output}"`` (``{{``/``}}`` are literal braces).
* :func:`build_example` turns a chat (or a record of fields) into ``input_ids``/``labels`` where the
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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from slmops.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
EXAMPLE_TEXT_TEMPLATE = "### Question: {input}\n### Answer: {output}"

__all__ = [
    "EXAMPLE_TEXT_TEMPLATE",
    "IGNORE_INDEX",
    "Example",
    "ExampleSet",
    "build_example",
    "build_examples",
    "chat_template_of",
    "fields_from_messages",
    "render_chat",
    "render_text_template",
    "special_token_kwargs",
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
        raise ConfigError(
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

    Rendering happens in a sandbox: a template that reaches for Python internals raises
    :class:`ConfigError`; a template that rejects the messages (``raise_exception``) raises
    :class:`DataError`. ``extra`` reaches the template as variables (``tools``, ``documents``,
    ``enable_thinking``, other special tokens …); ``tools`` and ``documents`` default to None as in
    transformers.
    """
    if not isinstance(template, str) or not template.strip():
        raise ConfigError("no chat template to render", fix="pass a {field} text template such as " + repr(EXAMPLE_TEXT_TEMPLATE))
    compiled = _compile(template)
    variables = {k: _plain(v) for k, v in extra.items()}
    variables.setdefault("tools", None)
    variables.setdefault("documents", None)
    try:
        return compiled.render(
            messages=_plain(list(messages)),
            add_generation_prompt=bool(add_generation_prompt),
            bos_token=bos_token or "",
            eos_token=eos_token or "",
            **variables,
        )
    except SecurityError as exc:
        raise ConfigError(
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
    except (TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise ConfigError(
            "the chat template failed to render",
            why=f"{type(exc).__name__}: {exc}",
            fix="check the template against these messages, or pass a {field} text template",
        ) from exc


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


# --------------------------------------------------------------------------- training examples


@dataclass(frozen=True)
class Example:
    """One tokenized training example; ``labels`` are -100 where no loss is taken."""

    input_ids: list[int]
    labels: list[int]
    attention_mask: list[int]
    truncated: bool = False

    @property
    def num_labels(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class ExampleSet:
    """Examples built from many records, with counts for the manifest (``truncated``, ``dropped``)."""

    examples: list[Example]
    total: int = 0
    truncated: int = 0
    dropped: int = 0

    def metrics(self) -> dict[str, int]:
        return {"examples": len(self.examples), "records": self.total, "truncated": self.truncated, "dropped_no_labels": self.dropped}


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


def _record_id(source: Any, record: Any) -> Any:
    if record is not None:
        return record
    rid = source.get("id") if isinstance(source, Mapping) else getattr(source, "id", None)
    return rid


def _special_strings(tokenizer: Any) -> list[str]:
    found: set[str] = set()
    for tok in getattr(tokenizer, "all_special_tokens", None) or []:
        found.add(str(tok))
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for tok in dict(decoder).values():
        content = getattr(tok, "content", tok)
        found.add(str(content))
    eos = getattr(tokenizer, "eos_token", None)
    if eos:
        found.add(str(eos))
    return sorted((s for s in found if s and not s.isspace()), key=len, reverse=True)


def _end_marker(suffix: str, specials: Sequence[str]) -> tuple[str, bool]:
    """The end-of-turn text right after an assistant message: through its first special token, else all of it."""
    best = -1
    best_tok = ""
    for tok in specials:
        i = suffix.find(tok)
        if i >= 0 and (best < 0 or i < best):
            best, best_tok = i, tok
    if best >= 0:
        return suffix[: best + len(best_tok)], True
    return suffix, False


def _common_prefix_len(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _assistant_spans(
    template: str, msgs: list[dict[str, Any]], kw: dict[str, Any], specials: Sequence[str]
) -> tuple[str, list[tuple[int, int]], bool]:
    """The rendered chat, the character spans to learn (assistant content + end marker), and whether an eos must be appended."""

    def render(ms: list[dict[str, Any]], gen: bool) -> str:
        return render_chat(template, ms, add_generation_prompt=gen, **kw)

    full = render(msgs, False)
    spans: list[tuple[int, int]] = []
    cursor = 0
    needs_eos = False
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        content = _content_text(m["content"])
        through = render(msgs[: i + 1], False)
        prefix = render(msgs[:i], True) if i > 0 else ""
        base = _common_prefix_len(prefix, through)
        start = through.find(content, base) if content else base
        if start < 0 and content.strip():
            content = content.strip()
            start = through.find(content, base)
        if start < 0:
            raise ConfigError(
                f"cannot find assistant turn {i} in the rendered chat",
                why="the chat template rewrites the message text, so its tokens cannot be located",
                fix="pass a {field} text template instead",
            )
        end = start + len(content)
        marker, special = _end_marker(through[end:], specials)
        piece_end = end + len(marker)
        if start >= cursor and full.startswith(through[:piece_end]):
            pos = start
        else:
            pos = full.find(through[start:piece_end], cursor)
            if pos < 0:
                raise ConfigError(
                    f"assistant turn {i} renders differently inside the whole chat",
                    why="the chat template is not prefix-consistent (it edits earlier turns)",
                    fix="pass a {field} text template, or train on one assistant turn per record",
                )
        spans.append((pos, pos + piece_end - start))
        cursor = pos + piece_end - start
        if i == len(msgs) - 1 and not special:
            needs_eos = True
    return full, spans, needs_eos


def _labels_from_spans(ids: list[int], offsets: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    labels = [IGNORE_INDEX] * len(ids)
    k = 0
    for j, (s, e) in enumerate(offsets):
        if e <= s:  # tokens added by the post-processor (bos) have empty offsets
            continue
        while k < len(spans) and s >= spans[k][1]:
            k += 1
        if k == len(spans):
            break
        if e > spans[k][0]:
            labels[j] = ids[j]
    return labels


def _tokenize(tokenizer: Any, text: str, *, add_special_tokens: bool) -> tuple[list[int], list[tuple[int, int]]]:
    if not getattr(tokenizer, "is_fast", True):
        raise ConfigError(
            "building loss masks needs a fast tokenizer (character offsets)",
            fix="save the model with a tokenizer.json (PreTrainedTokenizerFast)",
        )
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    return ids, offsets


def build_example(
    tokenizer: Any,
    source: Any,
    *,
    template: str | None = None,
    chat_template: str | None = None,
    max_length: int,
    record: Any = None,
    output_field: str = "output",
) -> Example:
    """Tokenize one record and mask everything but what the model must learn to write.

    ``source`` is a list of messages, a record with ``messages`` (object or dict), or a mapping of
    fields; a plain-text record (``text`` and no messages) is learned whole, followed by eos.

    * With ``template`` (a ``{field}`` text template) the labels cover the ``output_field`` part
      through the end of the text, plus the eos token; a chat record is first turned into
      ``system``/``input``/``output`` fields.
    * Without it, the chat template (``chat_template`` or the tokenizer's own) is used, and every
      assistant turn plus its end-of-turn marker (the first special token after it) is labelled;
      when the template writes no special token after the last answer, eos is appended.

    The chat is tokenized as transformers' ``apply_chat_template(tokenize=True)`` does (no extra
    special tokens). Sequences longer than ``max_length`` are cut on the right and flagged
    ``truncated``. ``record`` names the record in errors (default: its ``id``).
    """
    if max_length < 1:
        raise ConfigError(
            f"max_length must be at least 1 (got {max_length})", fix="set --max-length to the longest sequence to train on, e.g. 1024"
        )
    rid = _record_id(source, record)
    where = f"record {rid}" if rid is not None else "a record"
    messages: list[Any] | None
    plain: Any = None
    if isinstance(source, Mapping):
        messages = source.get("messages") if isinstance(source.get("messages"), list) else None
        fields: Mapping[str, Any] | None = None if messages is not None else source
        if not messages and isinstance(source.get("text"), str):
            plain = source["text"]
    elif isinstance(source, list | tuple):
        messages, fields = list(source), None
    elif isinstance(getattr(source, "messages", None), list | tuple):
        messages, fields = list(source.messages), None
        if not messages and isinstance(getattr(source, "text", None), str):
            plain = source.text
    else:
        raise DataError(f"{where} is neither a chat nor a mapping of fields", why=f"got {type(source).__name__}")

    eos_id = getattr(tokenizer, "eos_token_id", None)
    if template is None and plain is not None:
        # a plain-text record: language modelling on all of it, then eos
        ids, offsets = _tokenize(tokenizer, plain, add_special_tokens=True)
        labels = _labels_from_spans(ids, offsets, [(0, len(plain))])
        if eos_id is not None and (not ids or ids[-1] != eos_id):
            ids.append(eos_id)
            labels.append(eos_id)
    elif template is not None:
        if fields is None:
            fields = fields_from_messages(messages or [], record=rid)
        if output_field not in text_template_fields(template):
            raise ConfigError(
                f"the text template {template!r} has no {{{output_field}}} field",
                why="the loss is taken on the output part only",
                fix=f"put {{{output_field}}} where the answer goes, e.g. {EXAMPLE_TEXT_TEMPLATE!r}",
            )
        text, fspans = _render_text(template, fields, record=rid)
        spans = [(fspans[output_field][0][0], len(text))]
        ids, offsets = _tokenize(tokenizer, text, add_special_tokens=True)
        labels = _labels_from_spans(ids, offsets, spans)
        if eos_id is not None and (not ids or ids[-1] != eos_id):
            ids.append(eos_id)
            labels.append(eos_id)
    else:
        msgs = [_message(m, record=rid) for m in messages or []]
        if not any(m["role"] == "assistant" for m in msgs):
            raise DataError(
                f"{where} has no assistant turn",
                why="there is nothing for the model to learn from it",
                fix="drop the record, or add the expected answer as an assistant message",
            )
        tpl = (
            chat_template
            if chat_template is not None
            else chat_template_of(tokenizer, model=getattr(tokenizer, "name_or_path", None) or None)
        )
        kw = special_token_kwargs(tokenizer)
        text, spans, needs_eos = _assistant_spans(tpl, msgs, kw, _special_strings(tokenizer))
        ids, offsets = _tokenize(tokenizer, text, add_special_tokens=False)
        labels = _labels_from_spans(ids, offsets, spans)
        if needs_eos and eos_id is not None and (not ids or ids[-1] != eos_id):
            ids.append(eos_id)
            labels.append(eos_id)

    truncated = len(ids) > max_length
    if truncated:
        ids, labels = ids[:max_length], labels[:max_length]
    return Example(input_ids=ids, labels=labels, attention_mask=[1] * len(ids), truncated=truncated)


def build_examples(
    tokenizer: Any,
    sources: Iterable[Any],
    *,
    template: str | None = None,
    chat_template: str | None = None,
    max_length: int,
    output_field: str = "output",
    drop_empty: bool = True,
) -> ExampleSet:
    """:func:`build_example` over many records; counts (and logs) the truncated ones.

    With ``drop_empty`` an example whose labels were all cut off by truncation is dropped (it would
    contribute no loss) and counted in ``dropped``.
    """
    out = ExampleSet(examples=[])
    for n, src in enumerate(sources):
        rid = _record_id(src, None)
        ex = build_example(
            tokenizer,
            src,
            template=template,
            chat_template=chat_template,
            max_length=max_length,
            record=rid if rid is not None else f"#{n}",
            output_field=output_field,
        )
        out.total += 1
        out.truncated += ex.truncated
        if drop_empty and ex.num_labels == 0:
            out.dropped += 1
            continue
        out.examples.append(ex)
    if out.truncated:
        log.warning("%d of %d examples were longer than max_length=%d and were truncated", out.truncated, out.total, max_length)
    if out.dropped:
        log.warning("%d examples had no answer tokens left after truncation and were dropped", out.dropped)
    return out
