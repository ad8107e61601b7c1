"""Streaming text out of token ids: incremental detokenisation and stop strings, for every runtime.

* :class:`IncrementalDetokenizer` turns a growing list of token ids into text deltas. It decodes a
  small sliding window and only emits text once it is stable, so a multi-byte UTF-8 character
  split over several byte-level tokens, or a SentencePiece leading space, comes out right.
* :class:`StopMatcher` holds back text that might be the beginning of a stop string, cuts the
  output where a stop string starts, and never lets the stop string itself out.
* :class:`TextStream` chains the two; a runtime pushes token ids and forwards the deltas.

Pure Python, no numpy: the torch, ONNX Runtime GenAI and llama.cpp runtimes share these semantics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Decode = Callable[[Sequence[int]], str]

#: How many prompt tokens seed the detokenizer window, so the first generated token decodes in context.
PROMPT_CONTEXT_TOKENS = 5
_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Text deltas from token ids, pushed one at a time.

    ``decode`` maps ids to text (special tokens skipped, no clean-up of spaces). A delta is emitted
    when decoding the window grows the text and does not end in an incomplete character (U+FFFD);
    otherwise the token is held until the next one completes it, or until :meth:`flush`.
    """

    def __init__(self, decode: Decode, *, prompt_ids: Sequence[int] = (), context: int = PROMPT_CONTEXT_TOKENS) -> None:
        self._decode = decode
        self.ids: list[int] = list(prompt_ids[-context:]) if context > 0 else []
        self._prefix = 0
        self._read = len(self.ids)

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(_REPLACEMENT):
            self._prefix, self._read = self._read, len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character comes out as U+FFFD)."""
        if self._read == len(self.ids):
            return ""
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        self._prefix, self._read = self._read, len(self.ids)
        return new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""


class StopMatcher:
    """Cuts streamed text at the first stop string and holds back possible stop-string prefixes."""

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self.stops: tuple[str, ...] = tuple(dict.fromkeys(s for s in stops if s))
        self._longest = max((len(s) for s in self.stops), default=0)
        self._held = ""
        self.stopped = False
        self.matched: str | None = None

    def push(self, text: str) -> str:
        """The part of ``text`` (plus anything held) that is safe to emit now."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        buf = self._held + text
        hit, which = -1, None
        for s in self.stops:
            i = buf.find(s)
            if i >= 0 and (hit < 0 or i < hit):
                hit, which = i, s
        if hit >= 0:
            self.stopped, self.matched, self._held = True, which, ""
            return buf[:hit]
        hold = self._holdback(buf)
        self._held = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold]

    def _holdback(self, buf: str) -> int:
        # The longest suffix of buf that is a prefix of some stop string (a stop may still complete there).
        for p in range(max(0, len(buf) - self._longest + 1), len(buf)):
            tail = buf[p:]
            if any(s.startswith(tail) for s in self.stops):
                return len(buf) - p
        return 0

    def flush(self) -> str:
        """At the end of generation, held text was not a stop string after all."""
        out, self._held = ("" if self.stopped else self._held), ""
        return out


class TextStream:
    """Token ids in, stop-aware text deltas out; ``stopped`` turns true when a stop string completed."""

    def __init__(self, decode: Decode, *, stops: Sequence[str] = (), prompt_ids: Sequence[int] = ()) -> None:
        self.detok = IncrementalDetokenizer(decode, prompt_ids=prompt_ids)
        self.matcher = StopMatcher(stops)
        self.text = ""

    @property
    def stopped(self) -> bool:
        return self.matcher.stopped

    @property
    def matched(self) -> str | None:
        return self.matcher.matched

    def push(self, token_id: int) -> str:
        out = self.matcher.push(self.detok.push(token_id))
        self.text += out
        return out

    def finish(self) -> str:
        """Flush the detokenizer and the stop matcher (a stop string may still complete here)."""
        out = self.matcher.push(self.detok.flush())
        out += self.matcher.flush()
        self.text += out
        return out
