"""Text in and out of a llama.cpp vocabulary: tokenize, detokenize, token texts, end-of-generation ids.

Tokenization is llama.cpp's own, from the vocabulary inside the GGUF, with special-token text
(``<|user|>``) parsed into its token as transformers does. Byte-level BPE text is decoded by joining
token pieces (cached), with no clean-up of spaces — what the torch runtime's
``decode(clean_up_tokenization_spaces=False)`` gives; SentencePiece text goes through
``llama_detokenize``, which handles the leading space, after dropping control tokens when they are
skipped (transformers drops specials before it strips the first piece's space).
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable, Sequence
from typing import Any

from slmops.errors import ConfigError
from slmops.runtimes.llamacpp_lib import recent_problems

_SPM = 1  # LLAMA_VOCAB_TYPE_SPM


class LlamaVocab:
    """One model's vocabulary (``llama_vocab *``) with cached pieces."""

    def __init__(self, L: Any, vocab: Any) -> None:
        self._L, self._vocab = L, vocab
        self.size = int(L.llama_vocab_n_tokens(vocab))
        self.spm = int(L.llama_vocab_type(vocab)) == _SPM
        self.bos = int(L.llama_vocab_bos(vocab))
        self.eos = int(L.llama_vocab_eos(vocab))
        self._pieces: dict[tuple[int, bool], bytes] = {}

    def eog_ids(self, extra: Iterable[int] = ()) -> frozenset[int]:
        """Every id llama.cpp ends generation on, plus ``extra`` (e.g. ``slmops.stop_token_ids``)."""
        ids = {i for i in range(self.size) if self._L.llama_vocab_is_eog(self._vocab, i)}
        return frozenset(ids | {i for i in extra if 0 <= i < self.size})

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        data = text.encode("utf-8")
        size = len(data) + 8
        for _ in range(2):
            buf = (self._L.llama_token * size)()
            n = self._L.llama_tokenize(self._vocab, data, len(data), buf, size, add_special_tokens, True)
            if n >= 0:
                return list(buf[:n])
            size = -n
        raise ConfigError("llama.cpp could not tokenize the text", why=recent_problems())

    def _piece(self, token: int, special: bool) -> bytes:
        key = (token, special)
        piece = self._pieces.get(key)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = self._L.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._L.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
            piece = self._pieces[key] = buf.raw[: max(n, 0)]
        return piece

    def detokenize(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` (assumed in range: callers check). The streaming decode loop calls this per token."""
        if not self.spm:
            piece = self._piece
            return b"".join([piece(t, not skip_special_tokens) for t in ids]).decode("utf-8", errors="replace")
        if skip_special_tokens:
            ids = [t for t in ids if not self._L.llama_vocab_is_control(self._vocab, t)]
        if not ids:
            return ""
        arr = (self._L.llama_token * len(ids))(*ids)
        size = 8 * len(ids) + 64
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = self._L.llama_detokenize(self._vocab, arr, len(ids), buf, size, False, not skip_special_tokens)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            size = -n
        raise ConfigError("llama.cpp could not detokenize the ids", why=recent_problems())

    def text(self, token: int) -> str:
        """The vocabulary entry of a token (e.g. ``<|end|>``)."""
        return str(self._L.llama_vocab_get_text(self._vocab, int(token)).decode("utf-8", errors="replace"))
