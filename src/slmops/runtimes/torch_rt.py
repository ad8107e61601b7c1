"""The torch runtime: a Hugging Face folder run with transformers, through our own KV-cached decode loop.

It is the training-side reference the exported runtimes are checked against. Loading is safe by
default (through :func:`slmops.models.loading.load_model_and_tokenizer`): ``trust_remote_code`` is
off, and only ``*.safetensors`` weights are read (a folder with only pickled ``.bin`` weights is
refused with :class:`UnsafeInput` unless the caller opts in with ``allow_pickle=True``).

Generation runs one request at a time (a lock); the loop itself (sampling, stop strings,
streaming) is :func:`slmops.runtimes.base.decode_loop`, shared with the other runtimes. The model's
forward pass is called directly with ``past_key_values``/``use_cache``, so greedy output matches
``model.generate(do_sample=False)`` token for token.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmops._optional import require
from slmops.errors import ConfigError, UnsafeInput
from slmops.runtimes import runtime_spec
from slmops.runtimes.base import GenerationParams, LoadInfo, TokenEvent, decode_loop
from slmops.runtimes.common import EngineCommon

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

DTYPES = ("float32", "float16", "bfloat16", "auto")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_DEFAULT_CONTEXT = 2048


def _torch() -> Any:
    return require("torch", extra="train", purpose="the torch runtime")


def check_weights(path: Path, *, allow_pickle: bool = False) -> str:
    """``"safetensors"`` or ``"pickle"``: which weights the folder holds; refuse pickles unless allowed."""
    if any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file():
        return "safetensors"
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        if allow_pickle:
            log.warning("loading pickled weights from %s (%s): only do this for files you trust", path, ", ".join(pickles))
            return "pickle"
        raise UnsafeInput(
            f"{path} only has pickled weights ({', '.join(pickles[:3])})",
            why="pickle files can run arbitrary code when loaded, so slmops reads safetensors only",
            fix="convert the weights to safetensors where you trust them (model.save_pretrained(dir, safe_serialization=True)), "
            "or opt in with allow_pickle=True",
        )
    raise ConfigError(f"{path} has no model weights", why="no *.safetensors file was found", fix="point at a Hugging Face model folder")


def _torch_dtype(dtype: str) -> Any:
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not supported by the torch runtime", fix=f"use one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return "auto"
    return getattr(_torch(), dtype)


def _forward_params(model: Any) -> set[str]:
    """Keyword names ``model.forward`` takes (looking through wrappers such as PEFT's)."""
    for m in (model, getattr(model, "get_base_model", lambda: None)()):
        if m is None:
            continue
        try:
            params = inspect.signature(m.forward).parameters
        except (TypeError, ValueError):
            continue
        names = {n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if "input_ids" in names:
            return names
    return set()


class _TorchStepper:
    """One sequence's KV-cached forward passes (the :class:`~slmops.runtimes.base.Stepper` for torch)."""

    def __init__(self, rt: TorchRuntime, adapter: str | None = None) -> None:
        self.rt = rt
        self.past: Any = None
        self.adapter_names = [adapter] if adapter is not None else None

    def _forward(self, ids: Sequence[int]) -> np.ndarray:
        torch = _torch()
        with torch.inference_mode():
            x = torch.tensor([list(ids)], dtype=torch.long, device=self.rt.device)
            kwargs: dict[str, Any] = {"input_ids": x, "use_cache": True}
            if self.past is not None:
                kwargs[self.rt._cache_arg] = self.past
            if self.rt._logits_to_keep:
                kwargs["logits_to_keep"] = 1
            out = self.rt.forward(adapter_names=self.adapter_names, **kwargs)
            self.past = out.get(self.rt._cache_arg)
            if self.past is None:
                self.past = out.get("past_key_values") if self.rt._cache_arg == "cache" else out.get("cache")
            return out.logits[0, -1].float().cpu().numpy()

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        self.past = None
        return self._forward(ids)

    def step(self, token_id: int) -> np.ndarray:
        return self._forward([token_id])


class TorchRuntime(EngineCommon):
    """A transformers causal LM plus its tokenizer, behind the :class:`~slmops.runtimes.base.Runtime` protocol."""

    name = "torch"

    def __init__(self, model: Any, tokenizer: Any, *, chat_template: str | None = None, info: LoadInfo | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self._chat_template = chat_template
        self.info = info or LoadInfo()
        self._lock = threading.RLock()  # re-entrant: a caller may score logits while consuming its own stream
        self.device = str(next(model.parameters()).device)
        self._peft: Any = None  # a peft.PeftModel around ``model`` once an adapter is loaded
        self.capabilities = replace(runtime_spec(self.name).capabilities, devices=(self.device,))  # as registered (runtimes/__init__)
        params = _forward_params(model)
        # transformers >= 5.2x calls the KV cache ``cache`` (``past_key_values`` is deprecated); older ones only know the latter
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._logits_to_keep = "logits_to_keep" in params
        cfg = model.config
        self._vocab_size = int(getattr(cfg, "vocab_size", None) or model.get_output_embeddings().weight.shape[0])
        ctx = next((getattr(cfg, k) for k in ("max_position_embeddings", "n_positions", "seq_length") if getattr(cfg, k, None)), None)
        self._context_length = int(ctx or _DEFAULT_CONTEXT)
        eos: set[int] = set()
        for src in (getattr(model, "generation_config", None), cfg, tokenizer):
            v = getattr(src, "eos_token_id", None) if src is not None else None
            if isinstance(v, int):
                eos.add(v)
            elif isinstance(v, list | tuple):
                eos.update(int(t) for t in v if t is not None)
        self._eos = frozenset(eos)
        model.eval()

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        allow_pickle: bool = False,
        chat_template: str | None = None,
    ) -> TorchRuntime:
        """Load a Hugging Face model folder (config.json, safetensors weights, tokenizer files)."""
        t0 = time.perf_counter()
        path = Path(path).expanduser().resolve()
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ConfigError(
                f"{path} is not a Hugging Face model folder", why="it has no config.json", fix="point at the folder save_pretrained wrote"
            )
        weights = check_weights(path, allow_pickle=allow_pickle)
        torch_dtype = _torch_dtype(dtype)
        try:
            if weights == "safetensors":
                from slmops.models.loading import load_model_and_tokenizer

                model, tokenizer = load_model_and_tokenizer(path, dtype=dtype, device=device)
            else:
                transformers = require("transformers", extra="train", purpose="the torch runtime")
                tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
                model = transformers.AutoModelForCausalLM.from_pretrained(
                    str(path), dtype=torch_dtype, trust_remote_code=False, local_files_only=True, use_safetensors=False
                )
                model.to(device)
        except ValueError as exc:
            if "trust_remote_code" in str(exc):
                raise UnsafeInput(
                    f"{path} needs its own Python code to load",
                    why="slmops never runs code shipped with a model (trust_remote_code is off)",
                    fix="use a model whose architecture transformers supports natively",
                ) from exc
            raise ConfigError(f"transformers cannot load {path}", why=str(exc).splitlines()[0]) from exc
        except OSError as exc:
            raise ConfigError(
                f"transformers cannot load {path}", why=str(exc).splitlines()[0], fix="check the folder has its tokenizer and weights"
            ) from exc
        info = LoadInfo(
            source=str(path),
            format="hf-safetensors" if weights == "safetensors" else "hf-pickle",
            load_s=time.perf_counter() - t0,
            extra={"dtype": dtype},
        )
        return cls(model, tokenizer, chat_template=chat_template, info=info)

    # ------------------------------------------------------------------ text

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def detokenize(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False))

    def apply_chat_template(self, messages: Sequence[Any], add_generation_prompt: bool = True, **extra: Any) -> str:
        """Render the model's chat template (sandboxed, see :mod:`slmops.data.templates`)."""
        from slmops.data.templates import chat_template_of, render_chat, special_token_kwargs

        tpl = self._chat_template or chat_template_of(self.tokenizer, model=self.info.source)
        kw = {**special_token_kwargs(self.tokenizer), **extra}
        return render_chat(tpl, messages, add_generation_prompt=add_generation_prompt, **kw)

    @property
    def bos_token_id(self) -> int | None:
        return getattr(self.tokenizer, "bos_token_id", None)

    # ------------------------------------------------------------------ generation

    def _check_open(self) -> None:
        if self.model is None:
            raise ConfigError("this runtime has been closed", fix="open the model again with open_runtime()")

    def _stream(self, ids: list[int], params: GenerationParams, adapter: str | None) -> Iterator[TokenEvent]:
        with self._lock:
            self._check_open()
            yield from decode_loop(
                _TorchStepper(self, adapter),
                ids,
                params,
                decode=self.detokenize,
                eos_token_ids=self.eos_token_ids,
                context_length=self.context_length,
            )

    def batcher(self, slots: int, *, threads: int | None = None) -> Any:
        """Continuous batching of up to ``slots`` requests (:class:`~slmops.runtimes.torch_batch.TorchBatcher`).

        ``threads`` sets torch's intra-op threads (process-wide): on a busy machine fewer threads than
        cores avoid threads spinning against each other.
        """
        from slmops.runtimes.torch_batch import TorchBatcher

        if threads:
            _torch().set_num_threads(threads)
        return TorchBatcher(self, max_batch=slots)

    # ------------------------------------------------------------------ logits

    def _logits(self, ids: list[int], *, last_only: bool, adapter: str | None) -> np.ndarray:
        torch = _torch()
        with self._lock, torch.inference_mode():
            self._check_open()
            x = torch.tensor([ids], dtype=torch.long, device=self.device)
            kwargs: dict[str, Any] = {"input_ids": x, "use_cache": False}
            if last_only and self._logits_to_keep:
                kwargs["logits_to_keep"] = 1
            logits = self.forward(adapter_names=[adapter] if adapter is not None else None, **kwargs).logits[0]
            return (logits[-1] if last_only else logits).float().cpu().numpy()

    # ------------------------------------------------------------------ adapters

    def forward(self, *, adapter_names: Sequence[str | None] | None = None, **kwargs: Any) -> Any:
        """The model's forward pass; with adapters loaded, each batch row runs its own (None = the base model).

        PEFT cannot mix a DoRA adapter with other rows in one pass: a batch whose rows all use one DoRA
        adapter runs with that adapter active; a mix with one is refused (see :meth:`mixable`).
        """
        if self._peft is None:
            if adapter_names and any(adapter_names):
                raise ConfigError(f"adapter {next(a for a in adapter_names if a)!r} is not loaded", fix="load it with load_adapter()")
            return self.model(**kwargs)
        rows = int(kwargs["input_ids"].shape[0])
        names = [n or "__base__" for n in adapter_names] if adapter_names else ["__base__"] * rows
        dora = [n for n in dict.fromkeys(names) if self._is_dora(n)]
        if not dora:
            return self._peft(**kwargs, adapter_names=names)
        if len(set(names)) > 1:
            raise ConfigError(f"DoRA adapter {dora[0]!r} cannot share a forward pass with other adapters", fix="run its rows on their own")
        self._peft.set_adapter(dora[0])
        return self._peft(**kwargs)

    def _is_dora(self, name: str) -> bool:
        cfg = self._peft.peft_config.get(name) if self._peft is not None else None
        return bool(getattr(cfg, "use_dora", False))

    def mixable(self, adapter_names: Sequence[str | None]) -> bool:
        """Whether rows using these adapters (None = the base) can share one :meth:`forward` (no DoRA among several)."""
        distinct = {n or "__base__" for n in adapter_names}
        return len(distinct) <= 1 or not any(self._is_dora(n) for n in distinct)

    @property
    def adapters(self) -> tuple[str, ...]:
        """Names of the PEFT adapters loaded on this model."""
        return tuple(self._peft.peft_config) if self._peft is not None else ()

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load a PEFT (LoRA) adapter folder under ``name``; requests pick it per row through :meth:`forward`."""
        peft = require("peft", extra="train", purpose="adapters on the torch runtime")
        path = Path(path).expanduser().resolve()
        if not (path / "adapter_config.json").is_file():
            raise ConfigError(f"{path} is not a PEFT adapter folder", why="it has no adapter_config.json", fix="point at the folder save_pretrained wrote")
        with self._lock:
            self._check_open()
            if name in self.adapters:
                return
            if self._peft is None:
                self._peft = peft.PeftModel.from_pretrained(self.model, str(path), adapter_name=name, is_trainable=False)
            else:
                self._peft.load_adapter(str(path), adapter_name=name, is_trainable=False)
            self._peft.eval()

    def unload_adapter(self, name: str) -> bool:
        """Remove an adapter; the last one gone, the plain model is restored. False when it was not loaded."""
        with self._lock:
            if name not in self.adapters:
                return False
            if len(self.adapters) == 1:
                self.model = self._peft.unload()
                self._peft = None
            else:
                self._peft.delete_adapter(name)
            return True

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        with self._lock:
            self.model = None
            self._peft = None
            self.tokenizer = None

    def __repr__(self) -> str:
        return f"TorchRuntime(source={self.info.source!r}, device={self.device!r})"
