"""Continuous batching for the torch runtime: many sequences decode together, one forward pass per step.

Each request runs the shared :func:`~slmops.runtimes.base.decode_loop` in its own thread (so sampling,
stop strings and logprobs behave exactly as in :meth:`TorchRuntime.stream`), with a
:class:`_BatchSeq` as its stepper. The stepper does not run the model itself: it hands its prompt
(prefill) or its next token (step) to the :class:`TorchBatcher` thread and waits for the logits.
The batcher prefills newcomers one by one, then, once every running sequence has handed in its
next token, runs one batched forward for all of them.

The batch keeps one KV cache, left-padded: a sequence joining with a prompt of length ``L`` is
padded (or pads the batch) to the longest, an attention mask hides the padding, and explicit
``position_ids`` keep each row's positions its own, so a row decodes the same tokens as it would
alone (up to float rounding). A finished or cancelled sequence leaves at once; its row is dropped
and all-padding columns are trimmed. Rows may use different PEFT adapters (see
:meth:`TorchRuntime.forward`); PEFT cannot mix a DoRA adapter's rows with others, so such a step
runs one forward per adapter on its rows of the batch. With ``max_batch=1`` this is the
single-sequence loop.

The lockstep needs every member to ask for its next step promptly; it is made for a server whose
workers drain the stream as it comes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from slmops.errors import ConfigError
from slmops.runtimes.base import GenerationParams, Prompt, TokenEvent, decode_loop

if TYPE_CHECKING:
    import numpy as np

    from slmops.runtimes.torch_rt import TorchRuntime

log = logging.getLogger(__name__)


class _Closed(Exception):
    pass


@dataclass(eq=False)
class _BatchSeq:
    """One sequence's view of the batcher (a :class:`~slmops.runtimes.base.Stepper`)."""

    batcher: TorchBatcher
    adapter: str | None
    prompt: list[int] | None = None
    token: int | None = None
    pos: int = 0  # real tokens in the cache (the next position id)
    cache: list[tuple[Any, Any]] | None = None  # own KV after prefill, until merged into the batch
    logits: np.ndarray | None = None
    error: BaseException | None = None
    ready: threading.Event = field(default_factory=threading.Event)

    def _wait(self) -> np.ndarray:
        self.ready.wait()
        self.ready.clear()
        if self.error is not None:
            raise self.error
        assert self.logits is not None
        out, self.logits = self.logits, None
        return out

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        with self.batcher._cond:
            self.batcher._check_running()
            self.prompt = list(ids)
            self.batcher._prefills.append(self)
            self.batcher._cond.notify_all()
        return self._wait()

    def step(self, token_id: int) -> np.ndarray:
        with self.batcher._cond:
            self.batcher._check_running()
            self.token = int(token_id)
            self.batcher._cond.notify_all()
        return self._wait()


class TorchBatcher:
    """Runs the decode steps of up to ``max_batch`` concurrent sequences as batched forward passes."""

    def __init__(self, rt: TorchRuntime, max_batch: int = 4) -> None:
        if max_batch < 1:
            raise ConfigError(f"max_batch must be at least 1, not {max_batch}")
        self.rt = rt
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._prefills: list[_BatchSeq] = []
        self._members: list[_BatchSeq] = []  # prefilled, in the batch or about to join it
        self._rows: list[_BatchSeq] = []  # the batch's rows, in order
        self._kv: list[tuple[Any, Any]] = []  # per layer: keys, values [rows, heads, T, dim]
        self._mask: Any = None  # [rows, T] long
        self._closed = False
        self._in_forward = False
        self.steps = 0
        self.rows_stepped = 0
        self.stats = None  # no server metrics of its own (steps / rows_stepped are read by tests and benchmarks)
        self._thread = threading.Thread(target=self._loop, name="slmops-torch-batcher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public

    def stream(self, prompt: Prompt, params: GenerationParams | None = None, *, adapter: str | None = None) -> Iterator[TokenEvent]:
        """Like :meth:`TorchRuntime.stream`, sharing forward passes with the other running sequences."""
        return self._stream(self.rt._prepare(prompt, adapter), params or GenerationParams(), adapter)

    def _stream(self, ids: list[int], params: GenerationParams, adapter: str | None) -> Iterator[TokenEvent]:
        seq = _BatchSeq(self, adapter)
        try:
            yield from decode_loop(
                seq, ids, params, decode=self.rt.detokenize, eos_token_ids=self.rt.eos_token_ids, context_length=self.rt.context_length
            )
        finally:
            self._leave(seq)

    @property
    def context_length(self) -> int:
        """Tokens one request may use: the model's whole context (each row has its own cache)."""
        return self.rt.context_length

    def forget_adapter(self, name: str) -> None:
        """Nothing to end here: the runtime unloads an adapter under the lock each batched forward pass holds."""

    @property
    def running(self) -> int:
        with self._cond:
            return len(self._members) + len(self._prefills)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ bookkeeping

    def _check_running(self) -> None:
        if self._closed:
            raise ConfigError("this model is being unloaded", fix="retry the request")

    def _leave(self, seq: _BatchSeq) -> None:
        with self._cond:
            if seq in self._prefills:
                self._prefills.remove(seq)
            if seq in self._members:
                self._members.remove(seq)
            if seq in self._rows:
                self._drop_row(self._rows.index(seq))
            self._cond.notify_all()

    def _ready_to_step(self) -> bool:
        return bool(self._members) and all(m.token is not None for m in self._members)

    # ------------------------------------------------------------------ the batcher thread

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._prefills and not self._ready_to_step():
                    self._cond.wait()
                if self._closed:
                    self._fail_all(_Closed("closed"))
                    return
                job: _BatchSeq | None = self._prefills.pop(0) if self._prefills else None
                members = [] if job is not None else list(self._members)
            try:
                if job is not None:
                    self._prefill(job)
                else:
                    self._step(members)
            except BaseException as exc:  # deliver the failure to the waiting sequences, keep serving
                log.exception("batched forward failed")
                with self._cond:
                    self._in_forward = False
                    failed = [job] if job is not None else [*members, *self._rows]
                    for s in dict.fromkeys(failed):
                        s.error = ConfigError("generation failed", why=f"{type(exc).__name__}: {exc}")
                        if s in self._members:
                            self._members.remove(s)
                        s.ready.set()
                    if job is None:
                        self._reset_batch()

    def _fail_all(self, exc: BaseException) -> None:
        for s in [*self._prefills, *self._members]:
            s.error = ConfigError("this model was unloaded while generating", why=str(exc), fix="retry the request")
            s.ready.set()

    def _forward(self, input_ids: Any, adapters: list[str | None], **kwargs: Any) -> Any:
        torch = _torch()
        with self.rt._lock, torch.inference_mode():
            self.rt._check_open()
            call: dict[str, Any] = {"input_ids": input_ids, "use_cache": True, **kwargs}
            if self.rt._logits_to_keep:
                call["logits_to_keep"] = 1
            wants_names = any(adapters) or self.rt.adapters
            out = self.rt.forward(adapter_names=adapters if wants_names else None, **call)
            cache = out.get(self.rt._cache_arg)
            if cache is None:
                cache = out.get("past_key_values") if self.rt._cache_arg == "cache" else out.get("cache")
            return out.logits[:, -1].float().cpu().numpy(), [(layer.keys, layer.values) for layer in cache.layers]

    def _prefill(self, seq: _BatchSeq) -> None:
        torch = _torch()
        assert seq.prompt is not None
        x = torch.tensor([seq.prompt], dtype=torch.long, device=self.rt.device)
        logits, kv = self._forward(x, [seq.adapter])
        with self._cond:
            seq.cache, seq.pos, seq.token, seq.logits = kv, len(seq.prompt), None, logits[0]
            self._members.append(seq)
            seq.ready.set()

    def _step(self, members: list[_BatchSeq]) -> None:
        torch = _torch()

        with self._cond:
            members = [m for m in members if m in self._members]
            for m in members:
                if m not in self._rows:
                    self._join(m)
            rows = list(self._rows)
            tokens = [r.token for r in rows]
            positions = [r.pos for r in rows]
            adapters = [r.adapter for r in rows]
            kv, mask = self._kv, self._mask
            self._in_forward = bool(rows)
        if not rows:
            return
        x = torch.tensor([[t] for t in tokens], dtype=torch.long, device=self.rt.device)
        mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=mask.device)], dim=1)
        pos = torch.tensor([[p] for p in positions], dtype=torch.long, device=self.rt.device)
        if self.rt.mixable(adapters):
            logits, new_kv = self._step_rows(x, mask, pos, kv, adapters)
        else:
            logits, new_kv = self._step_by_adapter(x, mask, pos, kv, adapters)
        self.steps += 1
        self.rows_stepped += len(rows)
        with self._cond:
            self._in_forward = False
            self._kv, self._mask = new_kv, mask
            gone = [i for i, r in enumerate(rows) if r not in self._rows]
            for i, r in enumerate(rows):
                if i in gone:
                    continue
                r.pos += 1
                r.token = None
                r.logits = logits[i]
                r.ready.set()
            # rows that left while the forward ran were removed from the old tensors; redo on the new ones
            for i in sorted(gone, reverse=True):
                self._remove_index(i)
            self._trim()

    def _step_rows(self, x: Any, mask: Any, pos: Any, kv: list[tuple[Any, Any]], adapters: list[str | None]) -> tuple[Any, list[tuple[Any, Any]]]:
        from transformers.cache_utils import DynamicCache

        extra: dict[str, Any] = {self.rt._cache_arg: DynamicCache(ddp_cache_data=kv)}
        if not bool(mask.all()):  # no padding: the model's own mask and positions are the same and cheaper
            extra.update(attention_mask=mask, position_ids=pos)
        return self._forward(x, adapters, **extra)

    def _step_by_adapter(self, x: Any, mask: Any, pos: Any, kv: list[tuple[Any, Any]], adapters: list[str | None]) -> tuple[Any, list[tuple[Any, Any]]]:
        """One forward per adapter (PEFT cannot mix a DoRA adapter's rows with others); results back in row order."""
        import numpy as np

        torch = _torch()
        parts = []
        for name in dict.fromkeys(adapters):
            idx = [i for i, a in enumerate(adapters) if a == name]
            t = torch.tensor(idx, dtype=torch.long, device=x.device)
            parts.append((idx, *self._step_rows(x[t], mask[t], pos[t], [(k[t], v[t]) for k, v in kv], [name] * len(idx))))
        back = torch.tensor(np.argsort([i for idx, _, _ in parts for i in idx]), dtype=torch.long, device=x.device)
        logits = np.concatenate([lg for _, lg, _ in parts])[back.cpu().numpy()]
        new_kv = [
            (torch.cat([p[2][layer][0] for p in parts])[back], torch.cat([p[2][layer][1] for p in parts])[back])
            for layer in range(len(parts[0][2]))
        ]
        return logits, new_kv

    # ------------------------------------------------------------------ batch tensors (hold _cond)

    def _join(self, seq: _BatchSeq) -> None:
        torch = _torch()
        assert seq.cache is not None
        own = seq.cache
        length = own[0][0].shape[2]
        seq_mask = torch.ones((1, length), dtype=torch.long, device=own[0][0].device)
        if not self._rows:
            self._kv, self._mask = own, seq_mask
        else:
            cur = self._mask.shape[1]
            width = max(cur, length)
            self._kv = [
                (torch.cat([_lpad(k, width), _lpad(k2, width)]), torch.cat([_lpad(v, width), _lpad(v2, width)]))
                for (k, v), (k2, v2) in zip(self._kv, own, strict=True)
            ]
            self._mask = torch.cat([_lpad_mask(self._mask, width), _lpad_mask(seq_mask, width)])
        self._rows.append(seq)
        seq.cache = None

    def _drop_row(self, i: int) -> None:
        # while a forward runs its tensors are in flight: _step removes the row from the new ones
        self._rows.pop(i)
        if not self._rows:
            self._reset_batch()
        elif not self._in_forward:
            self._remove_index(i)
            self._trim()

    def _remove_index(self, i: int) -> None:
        keep = [j for j in range(self._mask.shape[0]) if j != i]
        if not keep:
            self._reset_batch()
            return
        self._kv = [(k[keep], v[keep]) for k, v in self._kv]
        self._mask = self._mask[keep]

    def _trim(self) -> None:
        if self._mask is None or not self._rows:
            return
        used = self._mask.sum(dim=0) > 0
        first = int(used.nonzero()[0].item()) if bool(used.any()) else 0
        if first > 0:
            self._kv = [(k[:, :, first:], v[:, :, first:]) for k, v in self._kv]
            self._mask = self._mask[:, first:]

    def _reset_batch(self) -> None:
        self._rows = []
        self._kv, self._mask = [], None


def _torch() -> Any:
    from slmops.runtimes.torch_rt import _torch as t

    return t()


def _lpad(x: Any, width: int) -> Any:
    torch = _torch()
    n = width - x.shape[2]
    if n <= 0:
        return x
    pad = torch.zeros((x.shape[0], x.shape[1], n, x.shape[3]), dtype=x.dtype, device=x.device)
    return torch.cat([pad, x], dim=2)


def _lpad_mask(m: Any, width: int) -> Any:
    torch = _torch()
    n = width - m.shape[1]
    if n <= 0:
        return m
    return torch.cat([torch.zeros((m.shape[0], n), dtype=m.dtype, device=m.device), m], dim=1)
