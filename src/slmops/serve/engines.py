"""How the server drives one loaded runtime: batched where the engine can, one request at a time where not.

An :class:`Engine` wraps a :class:`~slmops.runtimes.base.Runtime` with what serving needs on top of
the protocol: how many requests may generate at once (``slots``), streaming for a request that may
name an adapter, and hot adapter loading. Which one a runtime gets is read from its declared
:class:`~slmops.runtimes.base.Capabilities`, never from its name: with ``batching`` the runtime's
own :meth:`~slmops.runtimes.base.Runtime.batcher` runs up to ``--parallel`` requests together (torch:
:class:`~slmops.runtimes.torch_batch.TorchBatcher`; llama.cpp:
:class:`~slmops.runtimes.llamacpp_batch.LlamaBatcher` with prefix caching, whose per-slot
``context_length`` is what a request may use); without it requests run one at a time (the runtime's
own lock serialises generation anyway). A runtime whose ``capabilities.adapters`` is false refuses
adapters itself, saying why.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from slmops.runtimes.base import Batcher, GenerationParams, Runtime, TokenEvent


class Engine(Protocol):
    runtime: Runtime
    slots: int

    @property
    def context_length(self) -> int: ...

    @property
    def stats(self) -> Any: ...

    def stream(self, ids: Sequence[int], params: GenerationParams, adapter: str | None) -> Iterator[TokenEvent]: ...

    def load_adapter(self, name: str, path: Path) -> None: ...

    def unload_adapter(self, name: str) -> bool: ...

    def close(self) -> None: ...


class SerialEngine:
    """Any runtime, one request at a time."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.slots = 1

    @property
    def context_length(self) -> int:
        return self.runtime.context_length

    def _generate(self, ids: list[int], params: GenerationParams, adapter: str | None) -> Iterator[TokenEvent]:
        return self.runtime.stream(ids, params, adapter=adapter)

    @property
    def stats(self) -> Any:
        """Counters the server exports as metrics (a batcher's), or None."""
        return None

    def stream(self, ids: Sequence[int], params: GenerationParams, adapter: str | None) -> Iterator[TokenEvent]:
        return self._generate(list(ids), params, adapter)

    def load_adapter(self, name: str, path: Path) -> None:
        """Load through the runtime, which says why when this model takes no adapters (``capabilities.adapters``)."""
        self.runtime.load_adapter(name, path)

    def unload_adapter(self, name: str) -> bool:
        return bool(self.runtime.capabilities.adapters and self.runtime.unload_adapter(name))

    def close(self) -> None:
        self.runtime.close()


class BatchedEngine(SerialEngine):
    """A runtime that declares ``batching``: up to ``slots`` requests share its :class:`~slmops.runtimes.base.Batcher`."""

    def __init__(self, runtime: Runtime, slots: int, *, threads: int | None = None) -> None:
        super().__init__(runtime)
        self.slots = slots
        self.batcher: Batcher = runtime.batcher(slots, threads=threads)

    @property
    def context_length(self) -> int:
        """Tokens one request may use (prompt + completion): a slot's share where slots share one KV cache."""
        return self.batcher.context_length

    @property
    def stats(self) -> Any:
        return self.batcher.stats

    def _generate(self, ids: list[int], params: GenerationParams, adapter: str | None) -> Iterator[TokenEvent]:
        return self.batcher.stream(ids, params, adapter=adapter)

    def unload_adapter(self, name: str) -> bool:
        self.batcher.forget_adapter(name)
        return super().unload_adapter(name)

    def close(self) -> None:
        self.batcher.close()
        super().close()


def make_engine(runtime: Runtime, parallel: int, *, threads: int | None = None) -> Engine:
    """The engine for ``runtime``: batched when its capabilities declare ``batching``, serial otherwise.

    ``threads`` goes to the runtime's batcher (torch: intra-op threads, process-wide; llama.cpp: the
    batch context's threads): on a busy machine fewer threads than cores avoid threads spinning
    against each other, which can make small models ten times slower.
    """
    if runtime.capabilities.batching:
        return BatchedEngine(runtime, parallel, threads=threads)
    return SerialEngine(runtime)
