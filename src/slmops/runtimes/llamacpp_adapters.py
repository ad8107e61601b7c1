"""LoRA adapters on a llama.cpp context: load (GGUF LoRA, or a PEFT folder converted on the fly), scale, switch, unload.

A :class:`LoraSet` belongs to one :class:`~slmops.runtimes.llamacpp_rt.LlamaCppRuntime`. Adapters
listed by the artifact (``gguf.json``) are *default-on*: applied to every request. Adapters loaded
later with :meth:`LoraSet.load` (the server's hot adapters) are off until a request names one, and
then only that one is applied (:meth:`LoraSet.activate`), as on the torch runtime. A PEFT folder is
converted against the model's own layout, read from the GGUF (architecture and head counts), so
no Hugging Face base folder is needed.
"""

from __future__ import annotations

import ctypes
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmops.errors import ConfigError
from slmops.models.gguf_file import check_gguf_file
from slmops.runtimes.llamacpp_lib import clear_problems, recent_problems


@dataclass
class _Lora:
    ptr: Any
    scale: float
    default_on: bool


class LoraSet:
    """The LoRA adapters of one model/context pair."""

    def __init__(self, L: Any, model: Any, ctx: Any, *, arch: str | None, heads: tuple[int, int]) -> None:
        self._L, self._model, self._ctx = L, model, ctx
        self._arch, self._heads = arch, heads
        self._loras: dict[str, _Lora] = {}

    @property
    def scales(self) -> dict[str, float]:
        return {n: a.scale for n, a in self._loras.items()}

    def __contains__(self, name: str) -> bool:
        return name in self._loras

    def load(self, name: str, path: Path, *, scale: float = 1.0, default_on: bool = False) -> None:
        """Load ``path`` (a GGUF LoRA, a folder holding ``adapter.gguf``, or a PEFT folder) under ``name``."""
        if name in self._loras:
            return
        path = Path(path).expanduser().resolve()
        if path.is_dir() and (path / "adapter.gguf").is_file():
            path = path / "adapter.gguf"
        if path.is_dir():
            if not (path / "adapter_config.json").is_file():
                raise ConfigError(f"{path} holds no adapter", why="no adapter.gguf and no adapter_config.json", fix="pass a GGUF LoRA or a PEFT adapter folder")
            with tempfile.TemporaryDirectory(prefix="slmops-lora-") as tmp:  # llama.cpp copies the tensors at load time
                gguf_path = Path(tmp) / "adapter.gguf"
                self._convert(path, gguf_path)
                self._init(name, gguf_path, scale, default_on)
            return
        self._init(name, path, scale, default_on)

    def _convert(self, peft_dir: Path, out: Path) -> None:
        from slmops.models.gguf_arch import ARCH_SPECS, layout_hparams
        from slmops.models.gguf_lora import convert_lora

        if self._arch not in ARCH_SPECS:
            raise ConfigError(f"cannot convert a PEFT adapter for a {self._arch} GGUF", fix="convert it with slmops export gguf-lora against its base model")
        convert_lora(peft_dir, layout_hparams(self._arch, *self._heads), out, name=peft_dir.name)

    def _init(self, name: str, file: Path, scale: float, default_on: bool) -> None:
        facts = check_gguf_file(file)
        if facts.get("type") != "adapter":
            raise ConfigError(f"{file.name} is not a GGUF LoRA adapter", fix="convert the PEFT adapter with slmops export gguf MODEL --adapter ADAPTER")
        if self._arch and facts.get("architecture") and facts["architecture"] != self._arch:
            raise ConfigError(f"adapter {file.name} is for {facts['architecture']}, the model is {self._arch}", fix="use an adapter trained on this base model")
        clear_problems()
        ptr = self._L.llama_adapter_lora_init(self._model, str(file).encode())
        if not ptr:
            raise ConfigError(f"llama.cpp cannot load the LoRA adapter {file.name}", why=recent_problems(), fix="convert the adapter again against this base model")
        self._loras[name] = _Lora(ptr, float(scale), default_on)

    def applied(self, only: str | None = None) -> tuple[tuple[str, float], ...]:
        """(name, scale) of the adapters :meth:`activate` would apply: what a context's KV cells depend on."""
        if only is not None:
            lora = self._loras.get(only)
            return ((only, lora.scale),) if lora is not None and lora.scale != 0.0 else ()
        return tuple((n, a.scale) for n, a in self._loras.items() if a.default_on and a.scale != 0.0)

    def activate(self, only: str | None = None, *, ctx: Any = None) -> None:
        """Apply the default-on adapters (``only=None``), or just adapter ``only``, to the runtime's context (or ``ctx``)."""
        if only is not None and only not in self._loras:
            raise ConfigError(f"no adapter named {only!r} is loaded", fix=f"loaded: {', '.join(self._loras) or 'none'}")
        chosen = [self._loras[only]] if only is not None else [a for a in self._loras.values() if a.default_on]
        active = [a for a in chosen if a.scale != 0.0]
        arr = (self._L.llama_adapter_lora_p_ctypes * max(1, len(active)))(*[a.ptr for a in active])
        scales = (ctypes.c_float * max(1, len(active)))(*[a.scale for a in active])
        rc = self._L.llama_set_adapters_lora(self._ctx if ctx is None else ctx, arr if active else None, len(active), scales if active else None)
        if rc != 0:
            raise ConfigError("llama.cpp refused the LoRA adapters", why=recent_problems())

    def set_scales(self, scales: dict[str, float]) -> None:
        unknown = [n for n in scales if n not in self._loras]
        if unknown:
            raise ConfigError(f"no adapter named {unknown[0]!r} is loaded", fix=f"loaded: {', '.join(self._loras) or 'none'}")
        for n, s in scales.items():
            self._loras[n].scale = float(s)

    def unload(self, name: str) -> bool:
        lora = self._loras.pop(name, None)
        if lora is None:
            return False
        self.activate()
        self._L.llama_adapter_lora_free(lora.ptr)
        return True
