"""The model pool: loads models on first use, keeps at most ``max_loaded``, unloads idle ones after their TTL.

An :class:`Entry` is one loaded base model (keyed by its artifact digest) with its engine, its
scheduler and the adapters loaded on it; adapters are served as model ids of their own on top of
their loaded base. Requests hold an entry while they run (``active``): an entry that is unloaded,
evicted or replaced (an alias moved on) stops taking new requests at once but is only closed when
its last request has finished. Eviction picks the least recently used entry with nothing running;
when every loaded model is busy a new one is refused with 503 rather than queued without bound.

Everything here runs on the event loop; loading and closing run in worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slmops.errors import SlmopsError
from slmops.runtimes.base import Runtime
from slmops.serve.config import ServeConfig
from slmops.serve.engines import Engine, make_engine
from slmops.serve.protocol import APIError
from slmops.serve.resolve import Target
from slmops.serve.scheduler import Scheduler

log = logging.getLogger(__name__)

Opener = Callable[..., Runtime]


@dataclass(eq=False)
class Entry:
    """One loaded base model."""

    key: str
    label: str
    engine: Engine
    scheduler: Scheduler
    ttl_s: float
    ids: set[str] = field(default_factory=set)
    adapters: dict[str, str] = field(default_factory=dict)  # runtime adapter name -> served id
    active: int = 0
    last_used: float = field(default_factory=time.monotonic)
    loaded_at: float = field(default_factory=time.time)
    load_s: float = 0.0
    closing: bool = False
    cancels: set[threading.Event] = field(default_factory=set)
    adapter_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def runtime(self) -> Runtime:
        return self.engine.runtime


def _default_opener(artifact: Any, runtime: str = "auto") -> Runtime:
    from slmops.runtimes import open_runtime

    return open_runtime(artifact, runtime=runtime)


class ModelPool:
    """Loaded models by base digest, with TTL unloading and LRU eviction."""

    def __init__(self, config: ServeConfig, *, opener: Opener | None = None, on_change: Callable[[], None] | None = None) -> None:
        self.config = config
        self.opener = opener or _default_opener
        self.entries: dict[str, Entry] = {}
        self._loading: dict[str, asyncio.Task[Entry]] = {}
        self._closing: dict[Entry, threading.Thread] = {}
        self._on_change = on_change or (lambda: None)

    # ------------------------------------------------------------------ getting a model

    async def acquire(self, target: Target) -> Entry:
        """The loaded entry for ``target`` (loading base and adapter as needed), held until :meth:`release`."""
        entry = await self.ensure(target)
        entry.active += 1
        entry.last_used = time.monotonic()
        try:
            if target.adapter is not None:
                await self._ensure_adapter(entry, target)
        except BaseException:
            self.release(entry)
            raise
        return entry

    def release(self, entry: Entry) -> None:
        entry.active = max(0, entry.active - 1)
        entry.last_used = time.monotonic()
        if entry.closing and entry.active == 0:
            self._close_later(entry)

    async def ensure(self, target: Target, *, ttl_s: float | None = None) -> Entry:
        """Load ``target``'s base model if it is not loaded (sharing a load already under way)."""
        key = target.base_digest
        while True:
            entry = self.entries.get(key)
            if entry is not None:
                entry.ids.add(target.requested if target.adapter is None else target.ref)
                if ttl_s is not None:
                    entry.ttl_s = ttl_s
                return entry
            task = self._loading.get(key)
            if task is None:
                await self._make_room()
                task = asyncio.ensure_future(self._load(target, ttl_s))
                self._loading[key] = task
                task.add_done_callback(lambda _t, k=key: self._loading.pop(k, None))
            await asyncio.shield(task)

    async def _load(self, target: Target, ttl_s: float | None) -> Entry:
        t0 = time.perf_counter()
        try:
            runtime = await asyncio.to_thread(self.opener, target.base, runtime=self.config.runtime)
            engine = await asyncio.to_thread(lambda: make_engine(runtime, self.config.parallel, threads=self.config.threads))
        except SlmopsError as exc:
            # the client asked for a model this server lists; that it cannot load it is the server's fault
            raise APIError(500, f"cannot load {target.requested!r}: {exc.message}", type="server_error", param="model",
                           code="model_load_failed") from exc
        label = target.version if target.adapter is None else (target.base_label or f"sha256:{target.base.short}")
        entry = Entry(
            key=target.base_digest,
            label=label,
            engine=engine,
            scheduler=Scheduler(engine.slots, self.config.max_queue, name=label),
            ttl_s=self.config.ttl_s if ttl_s is None else ttl_s,
            load_s=time.perf_counter() - t0,
        )
        entry.ids.add(target.requested if target.adapter is None else target.ref)
        self.entries[entry.key] = entry
        log.info("loaded %s (%s) in %.2fs with %d slot(s)", label, target.base.short, entry.load_s, engine.slots)
        self._on_change()
        return entry

    async def _ensure_adapter(self, entry: Entry, target: Target) -> None:
        assert target.adapter is not None and target.adapter_path is not None
        if target.adapter in entry.adapters:
            return
        async with entry.adapter_lock:
            if target.adapter in entry.adapters:
                return
            try:
                await asyncio.to_thread(entry.engine.load_adapter, target.adapter, target.adapter_path)
            except SlmopsError as exc:
                raise APIError(400, f"cannot load the adapter of {target.requested!r} onto {entry.label}: {exc.message}",
                               param="model", code="invalid_lora") from exc
            entry.adapters[target.adapter] = target.ref
            self._on_change()

    async def unload_adapter(self, adapter: str) -> bool:
        """Remove a run-time adapter from whichever loaded model holds it."""
        for entry in list(self.entries.values()):
            if adapter in entry.adapters:
                async with entry.adapter_lock:
                    await asyncio.to_thread(entry.engine.unload_adapter, adapter)
                    entry.adapters.pop(adapter, None)
                self._on_change()
                return True
        return False

    # ------------------------------------------------------------------ making room, unloading

    async def _make_room(self) -> None:
        while len(self.entries) + len(self._loading) >= self.config.max_loaded:
            idle = [e for e in self.entries.values() if e.active == 0]
            if not idle:
                raise APIError(
                    503,
                    f"all {self.config.max_loaded} loaded model(s) are busy and --max-loaded is {self.config.max_loaded}",
                    type="server_error",
                    code="pool_full",
                    headers={"Retry-After": "1"},
                )
            victim = min(idle, key=lambda e: e.last_used)
            log.info("evicting %s (least recently used)", victim.label)
            self.unload(victim)

    def unload(self, entry: Entry, *, force: bool = False) -> None:
        """Stop routing to ``entry``; close it now if idle, else when its last request ends (``force`` cancels them)."""
        if self.entries.get(entry.key) is entry:
            del self.entries[entry.key]
        entry.closing = True
        if force:
            for ev in list(entry.cancels):
                ev.set()
        if entry.active == 0:
            self._close_later(entry)
        self._on_change()

    def find(self, model_id: str) -> Entry | None:
        for e in self.entries.values():
            if model_id in e.ids or model_id == e.label or model_id in e.adapters.values():
                return e
        return None

    def _close_later(self, entry: Entry) -> None:
        if entry in self._closing:
            return

        def close() -> None:
            try:
                entry.engine.close()
            except Exception:  # closing must not take the server down
                log.exception("closing %s failed", entry.label)
            finally:
                self._closing.pop(entry, None)

        thread = threading.Thread(target=close, name=f"slmops-close-{entry.label}", daemon=True)
        self._closing[entry] = thread
        thread.start()

    async def reap(self) -> list[str]:
        """Unload entries idle past their TTL; returns their labels."""
        now = time.monotonic()
        gone = [e for e in self.entries.values() if e.ttl_s > 0 and e.active == 0 and now - e.last_used >= e.ttl_s]
        for e in gone:
            log.info("unloading %s: idle for %.0fs", e.label, now - e.last_used)
            self.unload(e)
        return [e.label for e in gone]

    async def reaper(self) -> None:
        """Background task: :meth:`reap` every few seconds (or sooner for short TTLs)."""
        while True:
            ttls = [e.ttl_s for e in self.entries.values() if e.ttl_s > 0] or [self.config.ttl_s or 60.0]
            await asyncio.sleep(min(5.0, max(0.05, min(ttls) / 4)))
            await self.reap()

    async def close(self) -> None:
        for task in list(self._loading.values()):
            task.cancel()
        for e in list(self.entries.values()):
            self.unload(e, force=True)
        for thread in list(self._closing.values()):
            await asyncio.to_thread(thread.join, 10)
