"""The llama.cpp runtime: a GGUF file run through llama-cpp-python's C API, behind the Runtime protocol.

It drives llama.cpp directly (``llama_decode`` on one sequence with a KV cache) and reuses
:func:`slmops.runtimes.base.decode_loop` for sampling, stop strings and streaming, so a prompt and
:class:`GenerationParams` give the same tokens here as on the torch runtime whenever the logits
agree. ``sequence_logits`` returns every position's logits (for perplexity, KL and parity).

A GGUF artifact made by ``export.gguf`` holds ``model.gguf``, optionally LoRA adapters, and
``gguf.json`` saying which is which; the adapters listed there are applied at load time (scale
1.0), and :meth:`LlamaCppRuntime.set_adapter_scales` changes or disables them without reloading;
:meth:`LlamaCppRuntime.load_adapter` adds hot adapters a request can name (see :mod:`.llamacpp_adapters`).
Tokenization is llama.cpp's own (:mod:`.llamacpp_vocab`); the chat template comes from
``tokenizer.chat_template`` and is rendered in slmops' sandbox.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slmops.errors import ConfigError
from slmops.models.gguf_file import check_gguf_file, locate_gguf
from slmops.runtimes import runtime_spec
from slmops.runtimes.base import GenerationParams, LoadInfo, TokenEvent, check_vocab, decode_loop
from slmops.runtimes.common import EngineCommon
from slmops.runtimes.llamacpp_adapters import LoraSet
from slmops.runtimes.llamacpp_lib import clear_problems, default_threads, engine_timings, lib, model_params, recent_problems
from slmops.runtimes.llamacpp_vocab import LlamaVocab

log = logging.getLogger(__name__)

KV_TYPES = {"f32": 0, "f16": 1, "q8_0": 8}
DEFAULT_MAX_CONTEXT = 4096


class _Stepper:
    """One sequence's KV-cached forward passes (the Stepper for llama.cpp)."""

    def __init__(self, rt: LlamaCppRuntime) -> None:
        self.rt = rt
        self.n_past = 0

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        self.rt._reset()
        out = self.rt._decode(ids, 0, all_logits=False)
        self.n_past = len(ids)
        return out[-1]

    def step(self, token_id: int) -> np.ndarray:
        out = self.rt._decode([token_id], self.n_past, all_logits=False)
        self.n_past += 1
        return out[-1]


class LlamaCppRuntime(EngineCommon):
    """A GGUF model on llama.cpp, behind the :class:`~slmops.runtimes.base.Runtime` protocol."""

    name = "llamacpp"

    def __init__(
        self,
        model_path: Path,
        *,
        adapters: Sequence[tuple[Path, float, str]] = (),
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_batch: int = 512,
        kv_cache_type: str = "f16",
        chat_template: str | None = None,
        sidecar: dict[str, Any] | None = None,
    ) -> None:
        t0 = time.perf_counter()
        if kv_cache_type not in KV_TYPES:
            raise ConfigError(f"kv_cache_type {kv_cache_type!r} is not supported", fix=f"use one of {', '.join(KV_TYPES)}")
        L = self._L = lib()
        self._lock = threading.RLock()
        facts = check_gguf_file(model_path)
        if facts.get("type") == "adapter":
            raise ConfigError(f"{model_path.name} is a LoRA adapter, not a model", fix="open the base model's GGUF and pass the adapter with adapters=[...]")
        clear_problems()
        self._model = L.llama_model_load_from_file(str(model_path).encode(), model_params())
        if not self._model:
            raise ConfigError(f"llama.cpp cannot load {model_path.name}", why=recent_problems(), fix="export the model again (slmops export gguf), or update llama-cpp-python")
        self._ctx = None
        self._batch = None
        try:
            self._vocab = L.llama_model_get_vocab(self._model)
            self._vocab_size = int(L.llama_vocab_n_tokens(self._vocab))
            train_ctx = int(L.llama_model_n_ctx_train(self._model)) or DEFAULT_MAX_CONTEXT
            self._context_length = int(n_ctx or min(train_ctx, DEFAULT_MAX_CONTEXT))
            self._n_batch = max(1, min(int(n_batch), self._context_length))
            threads = int(n_threads or default_threads(facts["bytes"]))
            cp = L.llama_context_default_params()
            cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = self._context_length, self._n_batch, self._n_batch, 1
            cp.n_threads = cp.n_threads_batch = threads
            cp.type_k = cp.type_v = KV_TYPES[kv_cache_type]
            cp.no_perf = False  # keep llama.cpp's own timings (llama_perf_context), read by the benchmarks
            self._ctx = L.llama_init_from_model(self._model, cp)
            if not self._ctx:
                raise ConfigError(f"llama.cpp cannot create a context for {model_path.name}", why=recent_problems(), fix="try a smaller n_ctx")
            self._mem = L.llama_get_memory(self._ctx)
            self._batch = L.llama_batch_init(self._n_batch, 0, 1)
            heads = (int(self.metadata(f"{facts.get('architecture')}.attention.head_count") or 0),
                     int(self.metadata(f"{facts.get('architecture')}.attention.head_count_kv") or 0))
            self._loras = LoraSet(L, self._model, self._ctx, arch=facts.get("architecture"), heads=heads)
            for file, scale, name in adapters:
                self._loras.load(name, Path(file), scale=scale, default_on=True)
            self._loras.activate()
        except BaseException:
            self._free()
            raise
        # frees llama.cpp's memory when the runtime is garbage-collected (or at exit) without close()
        self._finalizer = weakref.finalize(self, self._release, L, self._batch, self._ctx, self._model)
        self._text = LlamaVocab(L, self._vocab)
        self._bos = self._text.bos
        self._eos = self._text.eog_ids(facts.get("stop_token_ids", []))
        tpl = L.llama_model_chat_template(self._model, None)
        self._chat_template = chat_template or (tpl.decode("utf-8", errors="replace") if tpl else None)
        self.capabilities = runtime_spec(self.name).capabilities  # as registered (runtimes/__init__)
        self.info = LoadInfo(
            source=str(model_path),
            format="gguf",
            load_s=time.perf_counter() - t0,
            extra={"qtype": (sidecar or {}).get("qtype"), "n_ctx": self._context_length, "threads": threads, "kv_cache_type": kv_cache_type,
                   "adapters": self._loras.scales, "file_bytes": facts["bytes"]},
        )

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_path(cls, path: str | Path, *, adapters: Sequence[str | Path | tuple[str | Path, float]] | None = None,
                  use_adapters: bool = True, **options: Any) -> LlamaCppRuntime:
        """Open a .gguf file or an ``export.gguf`` artifact folder (its adapters applied unless ``use_adapters=False``).

        ``adapters`` replaces the artifact's own list: paths of GGUF LoRA files, or ``(path, scale)``.
        Other options: ``n_ctx``, ``n_threads``, ``n_batch``, ``kv_cache_type`` (f16, f32, q8_0), ``chat_template``.
        """
        model, listed, side = locate_gguf(Path(path).expanduser().resolve())
        chosen: list[tuple[Path, float, str]] = listed if use_adapters else []
        if adapters is not None:
            chosen = []
            for a in adapters:
                p, s = (a if isinstance(a, tuple) else (a, 1.0))
                chosen.append((Path(p), float(s), Path(p).stem))
        return cls(model, adapters=chosen, sidecar=side, **options)

    def load_adapter(self, name: str, path: str | Path, scale: float = 1.0) -> None:
        """Load a LoRA under ``name`` (a GGUF LoRA, an ``export.gguf_lora`` folder, or a PEFT folder converted on the fly).

        It is off until a request names it (``stream(..., adapter=name)``); the artifact's own adapters stay on.
        """
        with self._lock:
            self._check_open()
            self._loras.load(name, Path(path), scale=scale)

    def unload_adapter(self, name: str) -> bool:
        """Remove a loaded adapter; False when none has that name."""
        with self._lock:
            self._check_open()
            return self._loras.unload(name)

    def set_adapter_scales(self, scales: dict[str, float]) -> None:
        """Change adapter scales by name (0 disables one); takes effect for the next request."""
        with self._lock:
            self._check_open()
            self._loras.set_scales(scales)
            self._loras.activate()

    @property
    def adapters(self) -> tuple[str, ...]:
        """Names of the loaded adapters (the artifact's own and hot ones)."""
        return tuple(self._loras.scales)

    @property
    def adapter_scales(self) -> dict[str, float]:
        """Loaded adapters and their scales (0: loaded, off)."""
        return self._loras.scales

    def batcher(self, slots: int, *, threads: int | None = None) -> Any:
        """Continuous batching with prefix caching (:class:`~slmops.runtimes.llamacpp_batch.LlamaBatcher`), ``threads`` for its context."""
        from slmops.runtimes.llamacpp_batch import LlamaBatcher

        return LlamaBatcher(self, slots, n_threads=threads)

    # ------------------------------------------------------------------ facts

    def engine_timings(self, reset: bool = False) -> dict[str, float]:
        """llama.cpp's own timings since the last reset (``llama_perf_context``): prompt and decode ms and token counts."""
        with self._lock:
            self._check_open()
            return engine_timings(self._ctx, reset=reset)

    def metadata(self, key: str) -> str | None:
        """A GGUF metadata value as text (None when absent)."""
        buf = ctypes.create_string_buffer(4096)
        n = self._L.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return None if n < 0 else buf.value.decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ text

    def _check_open(self) -> None:
        if self._ctx is None:
            raise ConfigError("this runtime has been closed", fix="open the model again with open_runtime()")

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """llama.cpp's tokenization; special-token text (``<|user|>``) becomes its token, as in transformers."""
        self._check_open()
        return self._text.tokenize(text, add_special_tokens)

    def detokenize(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        self._check_open()
        ids = [int(t) for t in ids]
        check_vocab(ids, self._vocab_size)
        return self._text.detokenize(ids, skip_special_tokens) if ids else ""

    def token_text(self, token: int) -> str:
        """The vocabulary entry of a token (e.g. ``<|end|>``), as stored in the GGUF."""
        return self._text.text(token)

    def apply_chat_template(self, messages: Sequence[Any], add_generation_prompt: bool = True, **extra: Any) -> str:
        """Render the GGUF's chat template (sandboxed, see :mod:`slmops.data.templates`)."""
        from slmops.data.templates import render_chat

        if not self._chat_template:
            raise ConfigError("this GGUF has no chat template", why="tokenizer.chat_template is not in the file",
                              fix="pass chat_template= when opening it, or export from a model whose tokenizer has one")
        specials = {}
        for key, tid in (("bos_token", self._bos), ("eos_token", self._text.eos)):
            if 0 <= tid < self._vocab_size:
                specials[key] = self.token_text(tid)
        return render_chat(self._chat_template, messages, add_generation_prompt=add_generation_prompt, **{**specials, **extra})

    @property
    def bos_token_id(self) -> int | None:
        return self._bos if self._bos >= 0 else None

    # ------------------------------------------------------------------ forward passes

    def _reset(self) -> None:
        self._L.llama_memory_clear(self._mem, True)

    def _decode(self, ids: Sequence[int], start: int, *, all_logits: bool) -> np.ndarray:
        """Feed ``ids`` at positions ``start…``; logits of every position, or of the last one only: [n, vocab]."""
        L, b, out = self._L, self._batch, []
        total = len(ids)
        for off in range(0, total, self._n_batch):
            chunk = ids[off : off + self._n_batch]
            b.n_tokens = len(chunk)
            last_chunk = off + len(chunk) == total
            for j, tok in enumerate(chunk):
                b.token[j] = int(tok)
                b.pos[j] = start + off + j
                b.n_seq_id[j] = 1
                b.seq_id[j][0] = 0
                b.logits[j] = all_logits or (last_chunk and j == len(chunk) - 1)
            rc = L.llama_decode(self._ctx, b)
            if rc != 0:
                raise ConfigError(f"llama.cpp failed to run the model (llama_decode returned {rc})", why=recent_problems(),
                                  fix="check the sequence fits the context (n_ctx)")
            n_out = len(chunk) if all_logits else int(last_chunk)
            if n_out:
                out.append(np.ctypeslib.as_array(L.llama_get_logits(self._ctx), shape=(n_out, self._vocab_size)).copy())
        return np.concatenate(out) if len(out) > 1 else out[0]

    @contextlib.contextmanager
    def _applying(self, adapter: str | None) -> Iterator[None]:
        """Apply adapter ``adapter`` alone while the block runs, then the artifact's own again (None: leave them)."""
        if adapter is None:
            yield
            return
        self._loras.activate(adapter)
        try:
            yield
        finally:
            if self._ctx is not None:
                self._loras.activate()

    def _logits(self, ids: list[int], *, last_only: bool, adapter: str | None) -> np.ndarray:
        with self._lock:
            self._check_open()
            self._reset()
            with self._applying(adapter):
                logits = self._decode(ids, 0, all_logits=not last_only)
        return logits[-1] if last_only else logits

    # ------------------------------------------------------------------ generation

    def _stream(self, ids: list[int], params: GenerationParams, adapter: str | None) -> Iterator[TokenEvent]:
        """``adapter`` names a loaded adapter to apply alone for this request (default: the artifact's own)."""
        with self._lock:
            self._check_open()
            with self._applying(adapter):
                # ids from the sampler are in range: decode straight from the vocabulary (no per-token checks)
                yield from decode_loop(_Stepper(self), ids, params, decode=self._text.detokenize, eos_token_ids=self._eos, context_length=self._context_length)

    # ------------------------------------------------------------------ lifetime

    @staticmethod
    def _release(L: Any, batch: Any, ctx: Any, model: Any) -> None:
        if batch is not None:
            L.llama_batch_free(batch)
        if ctx:
            L.llama_free(ctx)
        if model:
            L.llama_model_free(model)  # frees the model's LoRA adapters too

    def _free(self) -> None:
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer.detach()
        self._release(self._L, getattr(self, "_batch", None), getattr(self, "_ctx", None), getattr(self, "_model", None))
        self._batch = self._ctx = self._model = None

    def close(self) -> None:
        with self._lock:
            self._free()

    def __repr__(self) -> str:
        return f"LlamaCppRuntime(source={self.info.source!r}, n_ctx={self._context_length})"
