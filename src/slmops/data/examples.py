"""Training examples: a chat or a record of fields → ``input_ids`` and labels masked to the answer.

:func:`build_example` labels every assistant turn plus the end-of-turn marker after it (chat), or
the ``output`` field (text template); everything else is -100. The mask comes from rendering
incrementally (the prompt before each assistant turn vs the chat through it, see
:mod:`slmops.data.templates`) and mapping character spans to tokens with the tokenizer's offsets,
so it works for templates without ``{% generation %}`` blocks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slmops.data.templates import (
    EXAMPLE_TEXT_TEMPLATE,
    IGNORE_INDEX,
    _content_text,
    _message,
    _render_text,
    chat_template_of,
    fields_from_messages,
    render_chat,
    special_token_kwargs,
    text_template_fields,
)
from slmops.errors import ConfigError, DataError

log = logging.getLogger(__name__)


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
