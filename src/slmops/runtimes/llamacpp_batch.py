"""Continuous batching on llama.cpp: many sequences in one context, one ``llama_decode`` per step.

A :class:`LlamaBatcher` owns a second llama.cpp context on a loaded
:class:`~slmops.runtimes.llamacpp_rt.LlamaCppRuntime`'s model, with ``slots`` sequences
(``n_seq_max``), each with a KV stream of its own of ``ctx_per_seq`` cells (as llama-server's
``-np``). One thread runs the steps: requests join and leave between two steps; each step feeds
every decoding sequence's last token plus a chunk of the prompts still being prefilled (at most
``prefill_chunk`` prompt tokens while others decode, so a long prompt does not stall them), then
samples every sequence that produced logits with the shared :class:`~slmops.runtimes.base.TokenDecoder`
(same sampling, stop strings, logprobs and seeds as the single-sequence runtimes) and hands the
event to the request's queue. The consumer (the server's worker thread) only relays events.

Prefix caching: a finished sequence's KV cells stay in its slot with the tokens they hold. A new
request takes the free slot whose tokens share the longest prefix with its prompt (same adapters
only), removes the rest (``llama_memory_seq_rm``) and prefills only what differs, so a shared system
prompt or the earlier turns of a chat are not recomputed.

LoRA adapters apply to a whole llama.cpp context, not per sequence, so sequences run in groups of
one adapter set: a request naming another adapter waits until the running group has drained (no
request behind it is admitted before it, so neither side starves), then the context switches.

A failed step is retried sequence by sequence, so a sequence that cannot run fails its own request
only; an error while sampling or detokenising one sequence fails that sequence only.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from slmops.errors import ConfigError
from slmops.runtimes.base import GenerationParams, Prompt, TokenDecoder, TokenEvent, check_prompt
from slmops.runtimes.llamacpp_lib import attach_threadpool, engine_timings, free_threadpool, recent_problems

if TYPE_CHECKING:
    from slmops.runtimes.llamacpp_rt import LlamaCppRuntime

log = logging.getLogger(__name__)

_END = object()
DEFAULT_PREFILL_CHUNK = 128
MIN_REUSE = 0.1  # a slot is chosen for its cached prefix when that covers this share of the prompt (as llama-server)
KV_BUDGET_CELLS = 16384  # default total KV cells: ctx_per_seq = min(model context, this / slots), at least 1024


@dataclass(eq=False)
class _Seq:
    """One request inside the batcher."""

    prompt: list[int]
    params: GenerationParams
    key: tuple[Any, ...]
    decoder: TokenDecoder
    out: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    slot: _Slot | None = None
    fed: int = 0  # prompt tokens in the KV cache so far
    next_token: int | None = None  # sampled, not yet fed
    cancelled: bool = False
    finished: bool = False
    cached: int = 0
    t_submit: float = field(default_factory=time.perf_counter)


@dataclass(eq=False)
class _Slot:
    """One llama.cpp sequence id and the tokens its KV cells hold (kept after a request ends, for reuse)."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    key: tuple[Any, ...] | None = None
    seq: _Seq | None = None
    last_used: float = 0.0


@dataclass
class BatchStats:
    """Counters of a batcher since it started (read by the server's /metrics)."""

    steps: int = 0
    step_sequences: int = 0  # sum over steps of the sequences in each step
    max_batch: int = 0
    last_batch: int = 0
    prompt_tokens: int = 0
    prefix_hits: int = 0
    prefix_hit_tokens: int = 0
    failed_sequences: int = 0
    engine_s: float = 0.0  # inside llama_decode
    step_s: float = 0.0  # the Python work around the steps: batch building, sampling, detokenising, handing out events
    tokens: int = 0
    decoder_s: list[float] = field(default_factory=lambda: [0.0, 0.0])  # TokenDecoder: [sampling, detokenising + stops]


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class LlamaBatcher:
    """Continuous batching of up to ``slots`` sequences on one llama.cpp context (see the module doc)."""

    def __init__(self, rt: LlamaCppRuntime, slots: int = 4, *, ctx_per_seq: int | None = None, n_threads: int | None = None,
                 n_batch: int = 512, prefill_chunk: int = DEFAULT_PREFILL_CHUNK) -> None:
        if slots < 1:
            raise ConfigError(f"slots must be at least 1, not {slots}", fix="pass --parallel 1 or more")
        from slmops.runtimes.llamacpp_rt import KV_TYPES

        self.rt = rt
        L = self._L = rt._L
        per_seq = int(ctx_per_seq or min(rt.context_length, max(1024, KV_BUDGET_CELLS // slots)))
        per_seq = min(per_seq, rt.context_length)
        self.slots = slots
        self.n_batch = max(1, min(int(n_batch), per_seq * slots))
        self.prefill_chunk = max(1, min(int(prefill_chunk), self.n_batch))
        threads = int(n_threads or rt.info.extra.get("threads") or 1)
        cp = L.llama_context_default_params()
        cp.n_ctx = per_seq * slots
        cp.n_batch = cp.n_ubatch = self.n_batch
        cp.n_seq_max = slots
        cp.kv_unified = False
        cp.n_threads = cp.n_threads_batch = threads
        cp.type_k = cp.type_v = KV_TYPES[rt.info.extra.get("kv_cache_type") or "f16"]
        cp.no_perf = False
        self._ctx = L.llama_init_from_model(rt._model, cp)
        if not self._ctx:
            raise ConfigError(f"llama.cpp cannot create a context of {slots} x {per_seq} tokens", why=recent_problems(),
                              fix="lower --parallel")
        self._pool = attach_threadpool(self._ctx, threads)
        self._batch = L.llama_batch_init(self.n_batch, 0, 1)
        self._mem = L.llama_get_memory(self._ctx)
        self.context_length = int(L.llama_n_ctx_seq(self._ctx)) if hasattr(L, "llama_n_ctx_seq") else per_seq
        self.threads = threads
        self._n_vocab = rt.vocab_size
        self._slots = [_Slot(i) for i in range(slots)]
        self._waiting: deque[_Seq] = deque()
        self._active: list[_Seq] = []
        self._group: tuple[Any, ...] | None = None  # adapter key the context is set up for
        self._cond = threading.Condition()
        self._step_lock = threading.Lock()  # held while a step runs; adapter changes wait for it
        self._closed = False
        self.stats = BatchStats()
        self._thread = threading.Thread(target=self._loop, name="slmops-llama-batcher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ requests

    def stream(self, prompt: Prompt, params: GenerationParams | None = None, *, adapter: str | None = None) -> Iterator[TokenEvent]:
        """Like :meth:`LlamaCppRuntime.stream`, sharing ``llama_decode`` steps with the other running sequences."""
        params = params or GenerationParams()
        ids = self.rt.encode_prompt(prompt)
        check_prompt(ids, context_length=self.context_length, vocab_size=self._n_vocab)
        if adapter is not None and adapter not in self.rt.adapters:
            raise ConfigError(f"no adapter named {adapter!r} is loaded", fix="load it with load_adapter()")
        with self.rt._lock:
            key = (adapter, self.rt._loras.applied(adapter))  # KV cells are reused only under the same adapters
        dec = TokenDecoder(ids, params, decode=self.rt._text.detokenize, eos_token_ids=self.rt.eos_token_ids,
                           context_length=self.context_length, timings=self.stats.decoder_s)
        seq = _Seq(ids, params, key, dec)
        with self._cond:
            if self._closed:
                raise ConfigError("this model is being unloaded", fix="retry the request")
            self._waiting.append(seq)
            self._cond.notify_all()
        return self._events(seq)

    def _events(self, seq: _Seq) -> _Events:
        return _Events(self, seq)

    def _cancel(self, seq: _Seq) -> None:
        if not seq.finished:
            with self._cond:
                seq.cancelled = True
                self._cond.notify_all()

    @property
    def running(self) -> int:
        with self._cond:
            return len(self._active) + len(self._waiting)

    def engine_timings(self) -> dict[str, float]:
        """llama.cpp's own timings of the batch context (as :meth:`LlamaCppRuntime.engine_timings`, never reset),
        ``graphs_reused`` included: about one per step while each step stays one micro-batch."""
        return engine_timings(self._ctx)

    def slot_tokens(self) -> list[int]:
        """Tokens held in each slot's KV cells (for tests and the dashboard)."""
        with self._cond:
            return [len(s.tokens) for s in self._slots]

    # ------------------------------------------------------------------ adapters

    def forget_adapter(self, name: str) -> None:
        """Before an adapter is freed: fail its running requests, drop its cached prefixes, reset the context's adapters."""
        with self._step_lock, self._cond:
            for seq in [*self._active, *self._waiting]:
                if seq.key[0] == name:
                    self._fail(seq, ConfigError(f"adapter {name!r} was unloaded while this request ran", fix="retry the request"))
            self._waiting = deque(s for s in self._waiting if not s.finished)
            for slot in self._slots:
                if slot.key is not None and slot.key[0] == name:
                    slot.tokens, slot.key = [], None
            if self._group is not None and self._group[0] == name:
                self.rt._loras.activate(None, ctx=self._ctx)
                self._group = None

    # ------------------------------------------------------------------ the batcher thread

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        self._shutdown()
                        return
                    self._reap()
                    self._admit()
                    if self._active:
                        break
                    self._cond.wait()
                active = list(self._active)
            with self._step_lock:
                try:
                    self._step(active)
                except BaseException as exc:  # a bug here must not kill the thread: fail this step's sequences
                    log.exception("llama.cpp batch step failed")
                    with self._cond:
                        for seq in active:
                            self._fail(seq, ConfigError("generation failed", why=f"{type(exc).__name__}: {exc}"))

    def _reap(self) -> None:
        """Drop finished and cancelled sequences (holding ``_cond``); their slots keep the KV they computed."""
        keep = []
        for seq in self._active:
            if seq.finished or seq.cancelled:
                slot = seq.slot
                if slot is not None:
                    slot.seq = None
                    slot.last_used = time.monotonic()
                    seq.slot = None
                if not seq.finished:
                    seq.finished = True
                    seq.out.put(_END)
            else:
                keep.append(seq)
        self._active = keep
        if any(s.cancelled for s in self._waiting):
            for s in self._waiting:
                if s.cancelled:
                    s.finished = True
            self._waiting = deque(s for s in self._waiting if not s.cancelled)

    def _admit(self) -> None:
        """Move waiting requests into free slots (FIFO; another adapter group waits for the running one to drain)."""
        while self._waiting:
            seq = self._waiting[0]
            if self._active and seq.key != self._group:
                return
            free = [s for s in self._slots if s.seq is None]
            if not free:
                return
            self._waiting.popleft()
            if seq.key != self._group:
                self.rt._loras.activate(seq.key[0], ctx=self._ctx)
                self._group = seq.key
            self._place(seq, free)
            self._active.append(seq)

    def _place(self, seq: _Seq, free: list[_Slot]) -> None:
        """Put ``seq`` in the free slot sharing the longest prefix with its prompt; keep those cells, drop the rest."""
        def common(s: _Slot) -> int:
            return _lcp(s.tokens, seq.prompt) if s.key == seq.key else 0

        slot = max(free, key=lambda s: (common(s), -s.last_used))
        if common(slot) < MIN_REUSE * len(seq.prompt):  # little to gain: keep the caches, take the least recently used slot
            slot = min(free, key=lambda s: s.last_used)
        reuse = min(common(slot), len(seq.prompt) - 1)  # the last prompt token is always fed: its logits start the answer
        if reuse > 0 and not self._L.llama_memory_seq_rm(self._mem, slot.seq_id, reuse, -1):
            reuse = 0
        if reuse == 0:
            self._L.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
        slot.tokens = seq.prompt[:reuse]
        slot.key = seq.key
        slot.seq = seq
        seq.slot = slot
        seq.fed = seq.cached = reuse
        self.stats.prompt_tokens += len(seq.prompt)
        if reuse:
            self.stats.prefix_hits += 1
            self.stats.prefix_hit_tokens += reuse

    def _plan(self, active: list[_Seq]) -> list[tuple[_Seq, list[int], bool]]:
        """What the next step feeds: (sequence, tokens, wants logits) — decoders first, then prompt chunks."""
        plan: list[tuple[_Seq, list[int], bool]] = []
        room = self.n_batch
        decoding = [s for s in active if s.next_token is not None]
        for s in decoding:
            plan.append((s, [int(s.next_token)], True))  # type: ignore[arg-type]
            room -= 1
        chunk = self.prefill_chunk if decoding else self.n_batch
        for s in active:
            if s.next_token is None and s.fed < len(s.prompt) and room > 0 and chunk > 0:
                n = min(len(s.prompt) - s.fed, room, chunk)
                plan.append((s, s.prompt[s.fed : s.fed + n], s.fed + n == len(s.prompt)))
                room -= n
                chunk -= n
        # in slot order: with one KV stream per sequence llama.cpp splits a batch wherever the sequence ids
        # stop counting up (``split_equal``), and each split is a graph of its own that is rebuilt, not reused
        plan.sort(key=lambda p: p[0].slot.seq_id)  # type: ignore[union-attr]
        return plan

    def _step(self, active: list[_Seq]) -> None:
        """One ``llama_decode`` of the plan; if llama.cpp refuses it, each sequence alone (only those refused fail)."""
        t_start = time.perf_counter()
        plan = self._plan(active)
        if not plan:
            return
        rc = self._decode(plan)
        self.stats.steps += 1
        self.stats.step_sequences += len(plan)
        self.stats.last_batch = len(plan)
        self.stats.max_batch = max(self.stats.max_batch, len(plan))
        if rc == 0:
            self._sample(plan)
            self.stats.step_s += time.perf_counter() - t_start
            return
        if len(plan) > 1:
            log.warning("a batched llama_decode failed (%d); running its %d sequences one by one", rc, len(plan))
        for item in plan if len(plan) > 1 else []:
            rc = self._decode([item])
            if rc == 0:
                self._sample([item])
                continue
            self._refused(item[0], rc)
        if len(plan) == 1:
            self._refused(plan[0][0], rc)

    def _refused(self, seq: _Seq, rc: int) -> None:
        with self._cond:
            self._fail(seq, ConfigError(f"llama.cpp failed to run this sequence (llama_decode returned {rc})",
                                        why=recent_problems(), fix="check the prompt and max_tokens fit the context"))

    def _decode(self, plan: list[tuple[_Seq, list[int], bool]]) -> int:
        b, j = self._batch, 0
        for seq, toks, wants in plan:
            slot = seq.slot
            assert slot is not None
            start, sid = len(slot.tokens), slot.seq_id
            last = len(toks) - 1
            for k, tok in enumerate(toks):
                b.token[j] = tok
                b.pos[j] = start + k
                b.n_seq_id[j] = 1
                b.seq_id[j][0] = sid
                b.logits[j] = wants and k == last
                j += 1
        b.n_tokens = j
        t0 = time.perf_counter()
        rc = int(self._L.llama_decode(self._ctx, b))
        self.stats.engine_s += time.perf_counter() - t0
        return rc

    def _sample(self, plan: list[tuple[_Seq, list[int], bool]]) -> None:
        """After a good step: record what each sequence fed, sample those with logits, then hand out their events.

        The events go out only once every sequence is sampled: a consumer woken in the middle of the
        step would take the GIL from the sampling that the next ``llama_decode`` waits for.
        """
        n_out = sum(1 for p in plan if p[2])
        logits = np.ctypeslib.as_array(self._L.llama_get_logits(self._ctx), shape=(n_out, self._n_vocab)) if n_out else None
        row = -1
        ready: list[tuple[_Seq, TokenEvent]] = []
        for seq, toks, wants in plan:
            if wants:
                row += 1
            slot = seq.slot
            if slot is None or seq.finished:
                continue
            slot.tokens.extend(toks)
            if seq.next_token is None:
                seq.fed += len(toks)
            seq.next_token = None
            if not wants or seq.cancelled:
                continue
            assert logits is not None
            try:
                ev = seq.decoder(logits[row])
            except Exception as exc:  # this sequence's failure, not the batch's
                log.exception("sampling a sequence failed")
                with self._cond:
                    self._fail(seq, ConfigError("generation failed", why=f"{type(exc).__name__}: {exc}"))
                continue
            self.stats.tokens += 1
            ready.append((seq, ev))
            if not seq.decoder.done:
                seq.next_token = ev.token_id
        for seq, ev in ready:
            seq.out.put(ev)
            if seq.decoder.done:
                with self._cond:
                    seq.finished = True
                    seq.out.put(_END)

    def _fail(self, seq: _Seq, exc: BaseException) -> None:
        """Hold ``_cond``. End ``seq`` with ``exc``; its slot's cells are dropped (they may be half-written)."""
        if seq.finished:
            return
        seq.finished = True
        self.stats.failed_sequences += 1
        slot = seq.slot
        if slot is not None:
            slot.tokens, slot.key, slot.seq = [], None, None
            self._L.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
            seq.slot = None
        if seq in self._active:
            self._active.remove(seq)
        seq.out.put(exc)
        seq.out.put(_END)

    # ------------------------------------------------------------------ lifetime

    def _shutdown(self) -> None:
        for seq in [*self._active, *self._waiting]:
            if not seq.finished:
                seq.finished = True
                seq.out.put(ConfigError("this model was unloaded while generating", fix="retry the request"))
                seq.out.put(_END)
        self._active, self._waiting = [], deque()
        if self._batch is not None:
            self._L.llama_batch_free(self._batch)
        if self._ctx:
            self._L.llama_free(self._ctx)
        free_threadpool(self._pool)
        self._batch = self._ctx = self._pool = None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=10)


class _Events:
    """A request's token events as they come from the batcher; closing it (even unread) cancels the request."""

    def __init__(self, batcher: LlamaBatcher, seq: _Seq) -> None:
        self._batcher, self._seq, self._done = batcher, seq, False

    def __iter__(self) -> _Events:
        return self

    def __next__(self) -> TokenEvent:
        if self._done:
            raise StopIteration
        item = self._seq.out.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item  # type: ignore[no-any-return]

    def close(self) -> None:
        self._done = True
        self._batcher._cancel(self._seq)

    def __del__(self) -> None:
        if not self._done:
            self._batcher._cancel(self._seq)
