"""Server-sent events of an OpenAI stream: ``data: {chunk}`` lines up to ``data: [DONE]``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

DONE = "[DONE]"


def parse_sse_line(line: str) -> dict[str, Any] | str | None:
    """One server-sent-events line of an OpenAI stream: a chunk dict, ``"[DONE]"``, or None (comment, blank, other field)."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == DONE:
        return data
    try:
        chunk = json.loads(data)
    except ValueError:
        return None
    return chunk if isinstance(chunk, dict) else None


def iter_chunks(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The chunk dicts of an OpenAI SSE stream, up to ``[DONE]``."""
    for line in lines:
        item = parse_sse_line(line)
        if item == DONE:
            return
        if isinstance(item, dict):
            yield item


async def aiter_chunks(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    """:func:`iter_chunks` over an async line iterator (httpx ``aiter_lines``)."""
    async for line in lines:
        item = parse_sse_line(line)
        if item == DONE:
            return
        if isinstance(item, dict):
            yield item


def delta_text(chunk: dict[str, Any]) -> str:
    """The content text a chat-completion chunk carries ("" when it carries none)."""
    return "".join((c.get("delta") or {}).get("content") or "" for c in chunk.get("choices") or [])
