"""Record models: the accepted input kinds and the one normalised :class:`Record` they become.

Input kinds (one JSON object per record; the kind is detected from the fields unless given):

* ``chat``        ``{"messages": [{"role": "system|user|assistant|tool", "content": "..."}, ...]}``
* ``instruction`` ``{"input": "...", "output": "...", "system": "..."?}``
* ``prompt``      ``{"prompt": "...", "system": "..."?}`` (prompt only, e.g. for teacher generation)
* ``text``        ``{"text": "..."}`` (plain text, e.g. for continued pre-training or perplexity)

Every kind also accepts three optional fields: ``id`` (string or integer, kept as a string),
``label`` (string, number or bool; used for stratified splits and classification metrics) and
``meta`` (an object of free-form data). Any other field is an error, so a typo such as ``ouput``
is reported rather than silently ignored; put extra data under ``meta`` or rename columns with a
field map.

Detection order: ``kind`` + ``messages`` (already normalised) → ``messages`` (chat) → ``input`` or
``output`` (instruction) → ``prompt`` → ``text``.

The normalised form (:class:`Record`, one JSON object per line in a dataset artifact's files;
schema ``slmops.records/1``) always has exactly these keys, in this order::

    {"kind": "chat|instruction|prompt|text", "id": str|null, "label": str|int|float|bool|null,
     "messages": [{"role": ..., "content": ..., "name"?: ...}, ...], "text": str|null, "meta": {...}}

``messages`` is the chat form (instruction → system?/user/assistant; prompt → system?/user;
text → ``[]``), ``text`` is set only for the ``text`` kind, and ``kind`` keeps the original kind
so :meth:`Record.to_source` can give the record back in its input shape.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from slmops.errors import DataError

SCHEMA = "slmops.records/1"
Kind = Literal["chat", "instruction", "prompt", "text"]
KINDS: tuple[str, ...] = ("chat", "instruction", "prompt", "text")
Role = Literal["system", "user", "assistant", "tool"]
Label = str | int | float | bool


def _id_to_str(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


RecordId = Annotated[str | None, BeforeValidator(_id_to_str)]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


NonBlank = Annotated[str, AfterValidator(_not_blank)]


class Message(BaseModel):
    """One chat turn."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    role: Role
    content: NonBlank
    name: str | None = None


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: RecordId = None
    label: Label | None = None
    meta: dict[str, Any] = Field(default_factory=dict)


class ChatInput(_Common):
    messages: list[Message] = Field(min_length=1)


class InstructionInput(_Common):
    input: NonBlank
    output: NonBlank
    system: str | None = None


class PromptInput(_Common):
    prompt: NonBlank
    system: str | None = None


class TextInput(_Common):
    text: NonBlank


class Record(BaseModel):
    """A record in its normalised form (see the module docstring for the on-disk schema)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Kind
    id: RecordId = None
    label: Label | None = None
    messages: list[Message] = Field(default_factory=list)
    text: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Record:
        if self.kind == "text":
            if self.messages:
                raise ValueError("a text record has no messages")
            if not self.text or not self.text.strip():
                raise ValueError("a text record needs a non-empty 'text'")
        else:
            if self.text is not None:
                raise ValueError(f"a {self.kind} record has messages, not 'text'")
            if not self.messages:
                raise ValueError(f"a {self.kind} record needs at least one message")
            if self.kind == "instruction" and self.messages[-1].role != "assistant":
                raise ValueError("an instruction record ends with the assistant's answer")
            if self.kind == "prompt" and self.messages[-1].role == "assistant":
                raise ValueError("a prompt record has no assistant answer")
        return self

    # -- views used by training, distillation and evaluation ----------------------------------
    @property
    def system(self) -> str | None:
        """The first system message's content, if any."""
        return next((m.content for m in self.messages if m.role == "system"), None)

    @property
    def prompt_messages(self) -> list[Message]:
        """The conversation up to (not including) a final assistant turn."""
        if self.messages and self.messages[-1].role == "assistant":
            return list(self.messages[:-1])
        return list(self.messages)

    @property
    def completion(self) -> str | None:
        """The final assistant turn's content (the training target), or None."""
        if self.messages and self.messages[-1].role == "assistant":
            return self.messages[-1].content
        return None

    def content_text(self) -> str:
        """All of the record's text in one string (``role: content`` lines, or ``text``)."""
        if self.kind == "text":
            return self.text or ""
        return "\n".join(f"{m.role}: {m.content}" for m in self.messages)

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The normalised on-disk form: every key present, in a fixed order."""
        return {
            "kind": self.kind,
            "id": self.id,
            "label": self.label,
            "messages": [m.model_dump(exclude_none=True) for m in self.messages],
            "text": self.text,
            "meta": dict(self.meta),
        }

    def to_json(self) -> str:
        """One JSONL line (without the newline) of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    def to_source(self) -> dict[str, Any]:
        """The record back in the shape of its original kind (what a user would have written)."""
        out: dict[str, Any] = {}
        if self.kind == "chat":
            out["messages"] = [m.model_dump(exclude_none=True) for m in self.messages]
        elif self.kind == "text":
            out["text"] = self.text
        else:
            if self.system is not None:
                out["system"] = self.system
            user = next((m.content for m in self.messages if m.role == "user"), "")
            if self.kind == "instruction":
                out["input"], out["output"] = user, self.completion
            else:
                out["prompt"] = user
        for key in ("id", "label"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.meta:
            out["meta"] = dict(self.meta)
        return out


_INPUT_MODELS: dict[str, type[_Common]] = {
    "chat": ChatInput,
    "instruction": InstructionInput,
    "prompt": PromptInput,
    "text": TextInput,
}


def is_normalised(obj: dict[str, Any]) -> bool:
    """True when ``obj`` is already in the normalised :class:`Record` form."""
    return obj.get("kind") in KINDS and "messages" in obj


def detect_kind(obj: dict[str, Any]) -> str:
    """The record kind of a raw JSON object, from its fields; :class:`DataError` if none fits."""
    if not isinstance(obj, dict):
        raise DataError(f"a record must be a JSON object, not {type(obj).__name__}")
    if is_normalised(obj):
        return str(obj["kind"])
    if "messages" in obj:
        return "chat"
    if "input" in obj or "output" in obj:
        return "instruction"
    if "prompt" in obj:
        return "prompt"
    if "text" in obj:
        return "text"
    fields = ", ".join(sorted(map(str, obj))) or "none"
    raise DataError(
        f"cannot tell the record kind from its fields ({fields})",
        why="expected 'messages' (chat), 'input' + 'output' (instruction), 'prompt' (prompt) or 'text' (text)",
        fix="rename fields with a field map (e.g. --field-map question=input), or give the kind explicitly",
    )


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        path = ""
        for part in err["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        if err["type"] == "extra_forbidden":
            msg = "unknown field (put extra data under 'meta', or rename it with a field map)"
        else:
            msg = err["msg"]
            msg = msg.removeprefix("Value error, ")
            msg = msg[:1].lower() + msg[1:]
        out.append((path or "(record)", msg))
    return out


class RecordInvalid(DataError):
    """One record failed validation; ``problems`` holds (field path, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]], kind: str | None = None) -> None:
        self.problems = problems
        self.kind = kind
        text = "; ".join(f"{f}: {m}" if f != "(record)" else m for f, m in problems)
        super().__init__(f"invalid {kind + ' ' if kind else ''}record: {text}")

    @property
    def field(self) -> str | None:
        return self.problems[0][0] if self.problems and self.problems[0][0] != "(record)" else None

    @property
    def detail(self) -> str:
        return "; ".join(f"{f}: {m}" if f != "(record)" else m for f, m in self.problems)


def parse_record(obj: Any, kind: str | None = None) -> Record:
    """Validate a raw JSON object as ``kind`` (detected when None) and normalise it.

    Raises :class:`RecordInvalid` (a :class:`DataError`) naming each bad field.
    """
    if not isinstance(obj, dict):
        raise RecordInvalid([("(record)", f"expected a JSON object, got {type(obj).__name__}")])
    if kind is not None and kind not in KINDS:
        raise DataError(f"unknown record kind {kind!r}", fix=f"use one of: {', '.join(KINDS)}")
    if is_normalised(obj) and (kind is None or obj.get("kind") == kind):
        try:
            return Record.model_validate(obj)
        except ValidationError as exc:
            raise RecordInvalid(_problems(exc), str(obj.get("kind"))) from None
    if kind is None:
        try:
            kind = detect_kind(obj)
        except DataError as exc:
            raise RecordInvalid([("(record)", exc.what + "; " + (exc.why or ""))]) from None
    try:
        raw = _INPUT_MODELS[kind].model_validate(obj)
    except ValidationError as exc:
        raise RecordInvalid(_problems(exc), kind) from None
    return _normalise(kind, raw)


def _normalise(kind: str, raw: _Common) -> Record:
    messages: list[Message]
    text = None
    if isinstance(raw, ChatInput):
        messages = list(raw.messages)
    elif isinstance(raw, InstructionInput):
        messages = [Message(role="user", content=raw.input), Message(role="assistant", content=raw.output)]
        if raw.system:
            messages.insert(0, Message(role="system", content=raw.system))
    elif isinstance(raw, PromptInput):
        messages = [Message(role="user", content=raw.prompt)]
        if raw.system:
            messages.insert(0, Message(role="system", content=raw.system))
    else:
        assert isinstance(raw, TextInput)
        messages, text = [], raw.text
    return Record(kind=kind, id=raw.id, label=raw.label, messages=messages, text=text, meta=raw.meta)  # type: ignore[arg-type]
