"""How the server drives one loaded runtime: batched where the engine can, one request at a time where not.

An :class:`Engine` wraps a :class:`~slmops.runtimes.base.Runtime` with what serving needs on top of
the protocol: how many requests may generate at once (``slots``), streaming for a request that may
name an adapter, and hot adapter loading. The torch runtime gets continuous batching
(:class:`~slmops.runtimes.torch_batch.TorchBatcher`, ``slots = --parallel``) and PEFT adapters;
the llama.cpp runtime gets continuous batching with prefix caching
(:class:`~slmops.runtimes.llamacpp_batch.LlamaBatcher`, one KV stream per slot; its per-slot
``context_length`` is what a request may use); any other runtime runs one request at a time (its own lock serialises generation anyway), and
loads adapters if it offers ``load_adapter(name, path)`` and ``stream(..., adapter=name)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from slmops.errors import ConfigError
from slmops.runtimes.base import GenerationParams, Runtime, TokenEvent


class Engine(Protocol):
    runtime: Runtime
    slots: int

    def stream(self, ids: Sequence[int], params: GenerationParams, adapter: str | None) -> Iterator[TokenEvent]: ...

    def load_adapter(self, name: str, path: Path) -> None: ...

    def unload_adapter(self, name: str) -> bool: ...

    def close(self) -> None: ...


def _no_adapters(runtime: Runtime) -> ConfigError:
    return ConfigError(
        f"the {runtime.name} runtime cannot load adapters at run time",
        fix="merge the adapter into its base (or export the merged model) and serve that",
    )


class BatchedTorchEngine:
    """The torch runtime with continuous batching of up to ``slots`` requests and per-row PEFT adapters."""

    def __init__(self, runtime: Any, slots: int) -> None:
        from slmops.runtimes.torch_batch import TorchBatcher

        self.runtime = runtime
        self.slots = slots
        self.batcher = TorchBatcher(runtime, max_batch=slots)

    def stream(self, ids: Sequence[int], params: GenerationParams, adapter: str | None) -> Iterator[TokenEvent]:
        return self.batcher.stream(list(ids), params, adapter=adapter)

    def load_adapter(self, name: str, path: Path) -> None:
        self.runtime.load_adapter(name, path)

    def unload_adapter(self, name: str) -> bool:
        return bool(self.runtime.unload_adapter(name))

    def close(self) -> None:
        self.batcher.close()
        self.runtime.close()


class BatchedLlamaEngine:
    """The llama.cpp runtime with continuous batching and prefix caching (:class:`~slmops.runtimes.llamacpp_batch.LlamaBatcher`)."""

    def __init__(self, runtime: Any, slots: int, *, threads: int | None = None) -> None:
        from slmops.runtimes.llamacpp_batch import LlamaBatcher

        self.runtime = runtime
        self.slots = slots
        self.batcher = LlamaBatcher(runtime, slots, n_threads=threads)

    @property
    def context_length(self) -> int:
        """Tokens one request may use (prompt + completion): each slot's share of the KV cache."""
        return self.batcher.context_length

    @property
    def stats(self) -> Any:
        return self.batcher.stats

    def stream(self, ids: Sequence[int], params: GenerationParams, adapter: str | None) -> Iterator[TokenEvent]:
        return self.batcher.stream(list(ids), params, adapter=adapter)

    def load_adapter(self, name: str, path: Path) -> None:
        self.runtime.load_adapter(name, path)

    def unload_adapter(self, name: str) -> bool:
        self.batcher.forget_adapter(name)
        return bool(self.runtime.unload_adapter(name))

    def close(self) -> None:
        self.batcher.close()
        self.runtime.close()


class SerialEngine:
    """Any runtime, one request at a time."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.slots = 1
        stream_params = inspect.signature(runtime.stream).parameters
        self._adapter_kw = "adapter" in stream_params

    def stream(self, ids: Sequence[int], params: GenerationParams, adapter: str | None) -> Iterator[TokenEvent]:
        if adapter is None:
            return self.runtime.stream(list(ids), params)
        if not self._adapter_kw:
            raise _no_adapters(self.runtime)
        return self.runtime.stream(list(ids), params, adapter=adapter)  # type: ignore[call-arg]

    def load_adapter(self, name: str, path: Path) -> None:
        load = getattr(self.runtime, "load_adapter", None)
        if load is None or not self._adapter_kw:
            raise _no_adapters(self.runtime)
        load(name, path)

    def unload_adapter(self, name: str) -> bool:
        unload = getattr(self.runtime, "unload_adapter", None)
        return bool(unload(name)) if unload is not None else False

    def close(self) -> None:
        self.runtime.close()


def make_engine(runtime: Runtime, parallel: int, *, threads: int | None = None) -> Engine:
    """The engine for ``runtime``: batched torch, batched llama.cpp, or serial for every other runtime.

    ``threads`` sets torch's intra-op threads (process-wide), or the threads of the llama.cpp batch
    context: on a busy machine fewer threads than cores avoid threads spinning against each other,
    which can make small models ten times slower.
    """
    if runtime.name == "torch" and hasattr(runtime, "forward"):
        if threads:
            from slmops.runtimes.torch_rt import _torch

            _torch().set_num_threads(threads)
        return BatchedTorchEngine(runtime, parallel)
    if runtime.name == "llamacpp" and hasattr(runtime, "_model"):
        return BatchedLlamaEngine(runtime, parallel, threads=threads)
    return SerialEngine(runtime)


def encode(runtime: Runtime, prompt: str) -> list[int]:
    """Token ids of a rendered prompt, the way the runtime itself would encode it."""
    enc = getattr(runtime, "encode_prompt", None)
    if enc is not None:
        return list(enc(prompt))
    from slmops.runtimes.base import drop_double_bos

    ids = runtime.tokenize(prompt, add_special_tokens=True)
    tok = getattr(runtime, "tokenizer", None)
    return drop_double_bos(list(ids), getattr(tok, "bos_token_id", None))
