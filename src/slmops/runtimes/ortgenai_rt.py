"""The ONNX Runtime GenAI runtime: an ``export.onnx`` folder (or Foundry Local package) behind the Runtime protocol.

The engine runs the forward passes (``og.Generator.append_tokens`` on one sequence with its KV
cache); sampling, stop strings and streaming are :func:`slmops.runtimes.base.decode_loop`, shared
with the torch and llama.cpp runtimes, so the same prompt and :class:`GenerationParams` give the
same tokens as torch whenever the logits agree. ``next_token_logits``/``sequence_logits`` read the
generator's ``logits`` output after a prefill (every position's row, for perplexity and KL).

Tokenization is ORT GenAI's own (from ``tokenizer.json``) with two fixes so token ids match the
source model's Hugging Face tokenizer:

* **BOS** — ORT GenAI's tokenizer never adds one; this runtime prepends ``bos_token_id`` when the
  source tokenizer adds it (see :mod:`slmops.runtimes.ortgenai_files`), and does not double a BOS
  a chat template already rendered;
* **NFC** — text is NFC-normalised first when ``tokenizer.json`` declares that normalizer.

The chat template is rendered by slmops' sandboxed Jinja (:func:`slmops.data.templates.render_chat`).
Run-time LoRA adapters (``adapters/*.onnx_adapter``, or a PEFT folder converted on load) are
switched per request with ``stream(..., adapter=name)``.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from slmops._optional import require
from slmops.errors import ConfigError
from slmops.runtimes import runtime_spec
from slmops.runtimes.base import GenerationParams, LoadInfo, TokenEvent, decode_loop
from slmops.runtimes.common import EngineCommon
from slmops.runtimes.ortgenai_files import ADAPTER_SUFFIX, GenAIFolder, read_folder
from slmops.runtimes.ortgenai_stepper import OgStepper, engine_can_choose

log = logging.getLogger(__name__)


def _og() -> Any:
    return require("onnxruntime_genai", extra="onnx", purpose="the ort-genai runtime")


def _complete_utf8(piece: bytes | None) -> bool:
    if piece is None:
        return False
    try:
        piece.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class OrtGenAIRuntime(EngineCommon):
    """An ONNX Runtime GenAI model and tokenizer, behind the :class:`~slmops.runtimes.base.Runtime` protocol."""

    name = "ort-genai"

    def __init__(self, folder: GenAIFolder, model: Any, *, chat_template: str | None = None, info: LoadInfo | None = None) -> None:
        og = _og()
        self.folder = folder
        self.model = model
        self.tokenizer = og.Tokenizer(model)
        self._chat_template = chat_template
        self.info = info or LoadInfo()
        self._lock = threading.RLock()
        self._adapters: Any = None
        self._adapter_files: dict[str, Path] = {}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._pieces: list[bytes | None] | None = None
        self._check_fast_decode()
        self.engine_greedy = True  # let ORT GenAI pick greedy tokens itself (see OgStepper); False = always via logits
        lora = self._has_lora_inputs()
        declared = runtime_spec(self.name).capabilities  # as registered (runtimes/__init__); adapters only with LoRA inputs
        self.capabilities = replace(declared, adapters=lora, adapter_formats=declared.adapter_formats if lora else ())
        for name, path in folder.adapters.items():
            self.load_adapter(name, path)

    def _has_lora_inputs(self) -> bool:
        """Whether the graph takes LoRA weights as inputs (an ``adapter_mode=runtime`` export)."""
        from slmops.errors import MissingDependency
        from slmops.runtimes.ortgenai_adapters import lora_inputs

        try:
            return bool(self.folder.adapters) or bool(lora_inputs(self.folder.path / "model.onnx"))
        except (MissingDependency, OSError):
            return bool(self.folder.adapters)

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_path(cls, path: str | Path, *, provider: str | None = None, threads: int | None = None,
                  chat_template: str | None = None) -> OrtGenAIRuntime:
        """Open an ONNX GenAI folder; ``provider`` overrides the execution provider in ``genai_config.json``,
        ``threads`` ONNX Runtime's intra-op threads (default: one per physical core)."""
        og = _og()
        t0 = time.perf_counter()
        folder = read_folder(Path(path).expanduser().resolve())
        try:
            config = og.Config(str(folder.path))
            if threads is not None:
                config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": int(threads)}}}}))
            if provider is not None:
                config.clear_providers()
                if provider != "cpu":
                    config.append_provider(provider)
            model = og.Model(config)
        except Exception as exc:  # the engine raises plain RuntimeError/OSError for any load failure
            raise ConfigError(
                f"ONNX Runtime GenAI cannot load {folder.path}",
                why=str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                fix="re-export the model with `slmops export onnx` (the folder may be incomplete or for another execution provider)",
            ) from exc
        info = LoadInfo(source=str(folder.path), format="ort-genai", load_s=time.perf_counter() - t0, extra={"provider": provider or "config", "threads": threads})
        return cls(folder, model, chat_template=chat_template, info=info)

    # ------------------------------------------------------------------ facts

    @property
    def context_length(self) -> int:
        return self.folder.context_length

    @property
    def vocab_size(self) -> int:
        return self.folder.vocab_size

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self.folder.eos_token_ids

    @property
    def bos_token_id(self) -> int | None:
        return self.folder.bos_token_id

    # ------------------------------------------------------------------ text

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; with ``add_special_tokens`` the BOS token is prepended when the model's tokenizer adds one."""
        self._check_open()
        if self.folder.nfc:
            text = unicodedata.normalize("NFC", text)
        ids = [int(t) for t in self.tokenizer.encode(text)] if text else []
        if add_special_tokens and self.folder.add_bos and self.bos_token_id is not None:
            ids.insert(0, self.bos_token_id)
        return ids

    def _fast_decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str | None:
        pieces, specials = self._pieces, self.folder.special_tokens
        if pieces is None:
            return None
        out = []
        for t in ids:
            if skip_special_tokens and t in specials:
                continue
            piece = pieces[t] if 0 <= t < len(pieces) else None
            if piece is None:
                return None
            out.append(piece)
        return b"".join(out).decode("utf-8", errors="replace")

    def _check_fast_decode(self) -> None:
        """Use Python decoding only if it agrees with ORT GenAI's on a sample of the vocabulary.

        The sample is tokens that are whole UTF-8 text, special tokens between them: on stray bytes ORT
        GenAI drops the character after the U+FFFD it writes, and a lone special token decodes to
        U+FFFD, where Python (like Hugging Face's tokenizers, and so the torch runtime) keeps the
        character and gives an empty string.
        """
        pieces = self.folder.byte_pieces
        if not pieces:
            return
        self._pieces = pieces
        rng = np.random.default_rng(0)
        ids = [int(i) for i in rng.integers(0, min(len(pieces), self.vocab_size or len(pieces)), 512) if _complete_utf8(pieces[int(i)])]
        samples = [ids[k:k + 8] for k in range(0, len(ids), 8)] + [[*ids[:2], i, *ids[2:4]] for i in sorted(self.folder.special_tokens)[:16]]
        for s in samples:
            if self._fast_decode(s, True) != str(self.tokenizer.decode(np.asarray(s, dtype=np.int32))):
                log.info("ort-genai: Python decoding disagrees with ORT GenAI's on %s; using ORT GenAI's", s)
                self._pieces = None
                return

    def detokenize(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        self._check_open()
        ids = [int(t) for t in ids]
        fast = self._fast_decode(ids, skip_special_tokens)
        if fast is not None:
            return fast
        if skip_special_tokens or not self.folder.special_tokens:
            return str(self.tokenizer.decode(np.asarray(ids, dtype=np.int32))) if ids else ""
        # ORT GenAI always drops special tokens; put their text back between the decoded runs
        parts: list[str] = []
        run: list[int] = []
        for t in ids:
            if t in self.folder.special_tokens:
                if run:
                    parts.append(str(self.tokenizer.decode(np.asarray(run, dtype=np.int32))))
                    run = []
                parts.append(self.folder.special_tokens[t])
            else:
                run.append(t)
        if run:
            parts.append(str(self.tokenizer.decode(np.asarray(run, dtype=np.int32))))
        return "".join(parts)

    def apply_chat_template(self, messages: Sequence[Any], add_generation_prompt: bool = True, **extra: Any) -> str:
        """Render the model's chat template (sandboxed, see :mod:`slmops.data.templates`)."""
        from slmops.data.templates import render_chat

        tpl = self._chat_template or self.folder.chat_template
        if not tpl:
            raise ConfigError(
                f"model {self.folder.path} has no chat template",
                why="its folder has no chat_template.jinja and tokenizer_config.json defines none (base models often have none)",
                fix="pass a plain-text prompt, or open it with chat_template=...",
            )
        return render_chat(tpl, messages, add_generation_prompt=add_generation_prompt, **{**self.folder.special_token_strings, **extra})

    # ------------------------------------------------------------------ generation

    def _generator(self, adapter: str | None, *, greedy: bool = False) -> Any:
        og = _og()
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=self.context_length, batch_size=1)
        if greedy:
            params.set_search_options(do_sample=False, num_beams=1, repetition_penalty=1.0, min_length=0, no_repeat_ngram_size=0)
        gen = og.Generator(self.model, params)
        if adapter is not None:
            gen.set_active_adapter(self._adapters, adapter)
        return gen

    def _stream(self, ids: list[int], params: GenerationParams, adapter: str | None) -> Iterator[TokenEvent]:
        with self._lock:
            self._check_open()
            yield from decode_loop(
                OgStepper(self, adapter, greedy=self.engine_greedy and engine_can_choose(params)),
                ids,
                params,
                decode=self.detokenize,
                eos_token_ids=self.eos_token_ids,
                context_length=self.context_length,
            )

    # ------------------------------------------------------------------ logits

    def _logits(self, ids: list[int], *, last_only: bool, adapter: str | None) -> np.ndarray:
        with self._lock:
            self._check_open()
            gen = self._generator(adapter)
            gen.append_tokens(np.asarray(ids, dtype=np.int32))
            logits = gen.get_output("logits")
            del gen
        rows = np.array(logits.reshape(len(ids), -1), dtype=np.float32)
        return rows[-1] if last_only else rows

    # ------------------------------------------------------------------ adapters

    @property
    def adapters(self) -> tuple[str, ...]:
        """Names of the run-time LoRA adapters loaded on this model."""
        return tuple(self._adapter_files)

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load a LoRA adapter under ``name``: an ``.onnx_adapter`` file, or a PEFT folder (converted to one)."""
        from slmops.runtimes.ortgenai_adapters import lora_inputs, peft_to_params, write_adapter

        og = _og()
        path = Path(path).expanduser().resolve()
        with self._lock:
            self._check_open()
            if name in self._adapter_files:
                return
            inputs = lora_inputs(self.folder.path / "model.onnx")
            if not inputs:
                raise ConfigError(
                    f"this ONNX model cannot load adapters at run time ({self.folder.path.name})",
                    why="it was exported without LoRA inputs",
                    fix="re-export it with `slmops export onnx MODEL --adapter ADAPTER --adapter-mode runtime`, or merge the adapter before export",
                )
            if path.is_dir():
                if self._tmp is None:
                    self._tmp = tempfile.TemporaryDirectory(prefix="slmops-ortgenai-")
                file = write_adapter(peft_to_params(path, inputs), Path(self._tmp.name) / f"{len(self._adapter_files)}{ADAPTER_SUFFIX}")
            elif path.is_file():
                file = path
            else:
                raise ConfigError(f"no adapter at {path}", fix="pass an .onnx_adapter file or a PEFT adapter folder")
            if self._adapters is None:
                self._adapters = og.Adapters(self.model)
            try:
                self._adapters.load(str(file), name)
            except Exception as exc:
                raise ConfigError(f"ONNX Runtime GenAI cannot load adapter {name!r} from {path}", why=str(exc).strip()) from exc
            self._adapter_files[name] = file

    def unload_adapter(self, name: str) -> bool:
        """Remove an adapter; False when it was not loaded."""
        with self._lock:
            if name not in self._adapter_files:
                return False
            self._adapters.unload(name)
            del self._adapter_files[name]
            return True

    # ------------------------------------------------------------------ lifetime

    def _check_open(self) -> None:
        if self.model is None:
            raise ConfigError("this runtime has been closed", fix="open the model again with open_runtime()")

    def close(self) -> None:
        with self._lock:
            self._adapters = None
            self.tokenizer = None
            self.model = None
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None

    def __repr__(self) -> str:
        return f"OrtGenAIRuntime(source={self.info.source!r})"
