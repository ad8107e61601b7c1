"""Randomly initialised models of real architectures, with a tokenizer trained in code.

:func:`init_model` writes a complete Hugging Face folder (``config.json``, ``model.safetensors``,
``generation_config.json``, tokenizer files) that transformers, PEFT, ORT GenAI's builder and
llama.cpp's converter read like any downloaded model. The tokenizer is trained on the ``data``
dataset's text when one is given, else on the built-in corpus; weights come from a seeded RNG, so
the same config and data always give the same folder.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from slmops._optional import require
from slmops.errors import DataError
from slmops.models.architectures import ArchitectureConfig, build_config, resolve_dims
from slmops.models.corpus import builtin_corpus
from slmops.models.loading import quiet_progress
from slmops.models.tokenizer import ARCH_TOKENIZER, EOD, GGUF_PRE, save_tokenizer, tokenizer_facts, train_tokenizer
from slmops.store.artifact import Artifact

log = logging.getLogger(__name__)

#: Files of a dataset artifact used to train a tokenizer, in order of preference (see :func:`dataset_texts`).
TRAIN_FILES = ("data.jsonl", "train.jsonl")
FALLBACK_FILES = ("validation.jsonl", "test.jsonl")
TEXT_KEYS = ("text", "input", "output", "prompt", "completion", "response", "instruction", "question", "answer", "context")


class InitConfig(ArchitectureConfig):
    """Config of ``models.init``: architecture and size, tokenizer, seed and dtype."""

    seed: int = Field(0, description="Seed of the weight initialisation")
    vocab_size: int = Field(2000, ge=300, le=262144, description="Tokenizer vocabulary size to train (an upper bound for small corpora)")
    chat_template: Literal["auto", "phi", "chatml"] = Field(
        "auto", description="Chat format: phi (<|user|>…<|end|>), chatml (<|im_start|>…<|im_end|>); auto = chatml for qwen2, phi otherwise"
    )
    generation_tags: bool = Field(True, description="Wrap assistant turns in {% generation %} so transformers can return assistant masks")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="dtype of the saved weights")
    max_texts: int = Field(200_000, ge=1, description="At most this many texts from the data input train the tokenizer")


def dataset_texts(artifact: Artifact) -> Iterator[str]:
    """Every string of a dataset artifact worth training a tokenizer on.

    Reads ``data.jsonl``/``train.jsonl`` (else ``validation.jsonl``/``test.jsonl``) line by line and
    yields ``messages[*].content`` and the ``text``/``input``/``output``/``prompt``… fields. This is
    the one place that knows the dataset layout; it can become a call to ``slmops.data.io`` later.
    """
    files = [artifact.file(n) for n in TRAIN_FILES if artifact.file(n).is_file()]
    files = files or [artifact.file(n) for n in FALLBACK_FILES if artifact.file(n).is_file()]
    if not files:
        raise DataError(
            f"dataset {artifact.short} has no JSONL records",
            why=f"expected one of {', '.join(TRAIN_FILES + FALLBACK_FILES)}",
            fix="pass a dataset artifact made by a data.* stage, or leave the data input out",
        )
    for path in files:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise DataError(f"{path.name}:{lineno} is not valid JSON", why=str(exc), fix="repair or drop that line") from exc
                yield from record_texts(record)


def record_texts(record: Any) -> Iterator[str]:
    """The strings of one record: message contents (string or text parts) and known text fields."""
    if not isinstance(record, dict):
        return
    for msg in record.get("messages") or []:
        if isinstance(msg, dict):
            content = msg.get("content")
            if isinstance(content, str):
                yield content
            elif isinstance(content, list):
                yield from (p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    for key in TEXT_KEYS:
        if isinstance(value := record.get(key), str):
            yield value


def _take(texts: Iterable[str], n: int) -> Iterator[str]:
    for i, t in enumerate(texts):
        if i >= n:
            return
        yield t


def init_model(cfg: InitConfig, out: Path, *, texts: Iterable[str] | None = None) -> dict[str, Any]:
    """Write a seeded random model of ``cfg`` with a freshly trained tokenizer into ``out``.

    Returns facts for the manifest (architecture, parameters, vocabulary, tokenizer).
    """
    torch = require("torch", extra="train", purpose="initialising a model")
    tf = require("transformers", extra="train", purpose="initialising a model")
    spec = ARCH_TOKENIZER[cfg.arch]
    pretok = spec.pretokenizer
    style = spec.chat_style if cfg.chat_template == "auto" else cfg.chat_template
    dims = resolve_dims(cfg)
    source = "data" if texts is not None else "builtin"
    tok = train_tokenizer(
        _take(texts, cfg.max_texts) if texts is not None else builtin_corpus(),
        vocab_size=cfg.vocab_size,
        chat_style=style,
        add_bos=spec.add_bos,
        pretokenizer=pretok,
        generation_tags=cfg.generation_tags,
        model_max_length=dims["context_length"],
    )
    vocab = len(tok)
    eod_id = tok.convert_tokens_to_ids(EOD)
    config = build_config(
        cfg, vocab_size=vocab, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, dtype=cfg.dtype
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = tf.GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=[tok.eos_token_id, eod_id], pad_token_id=tok.pad_token_id, do_sample=False
    )
    if cfg.dtype != "float32":
        model = model.to(getattr(torch, cfg.dtype))
    with quiet_progress():
        model.save_pretrained(str(out))
    save_tokenizer(tok, out, tokenizer_class=spec.tokenizer_class)
    params = sum(p.numel() for p in model.parameters())
    facts = tokenizer_facts(tok)
    log.info("models.init: %s %s, %d parameters, vocab %d (%s text)", cfg.arch, cfg.size, params, vocab, source)
    return {
        "arch": cfg.arch,
        "model_type": config.model_type,
        "architecture": type(model).__name__,
        "parameters": params,
        "vocab_size": vocab,
        "context_length": dims["context_length"],
        "dims": dims,
        "dtype": cfg.dtype,
        "tokenizer": {
            **facts,
            "trained_on": source,
            "pretokenizer": pretok,
            "gguf_pre": GGUF_PRE[pretok],
            "tokenizer_config_class": spec.tokenizer_class,
        },
    }
