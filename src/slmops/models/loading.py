"""Loading a stored model and its tokenizer with transformers, safely (safetensors, no remote code)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slmops._optional import require
from slmops.errors import ConfigError, StoreError
from slmops.store.artifact import Artifact

DTYPES = ("float32", "bfloat16", "float16", "auto")


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """Silence transformers' own tqdm bars (library code reports progress through slmops.progress)."""
    tf_logging = require("transformers.utils.logging", extra="train")
    was_on = tf_logging.is_progress_bar_enabled()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            tf_logging.enable_progress_bar()


def model_folder(artifact_or_path: Artifact | Path | str) -> Path:
    """The HF folder of an artifact (its weights checked against its digest, cached), or a path checked to hold ``config.json``."""
    if isinstance(artifact_or_path, Artifact):
        from slmops.store.verified import ensure_verified

        ensure_verified(artifact_or_path)  # training and export never start from damaged weights
    path = artifact_or_path.path if isinstance(artifact_or_path, Artifact) else Path(artifact_or_path).expanduser().resolve()
    if not (path / "config.json").is_file():
        raise StoreError(f"{path} is not a model folder", why="it has no config.json", fix="pass a model artifact (models.init, models.import or a fine-tune)")
    return path


def load_tokenizer(artifact_or_path: Artifact | Path | str) -> Any:
    """The tokenizer of a model folder (``AutoTokenizer``, local files only, no remote code)."""
    tf = require("transformers", extra="train", purpose="loading a tokenizer")
    return tf.AutoTokenizer.from_pretrained(str(model_folder(artifact_or_path)), trust_remote_code=False, local_files_only=True)


def load_model_and_tokenizer(artifact_or_path: Artifact | Path | str, *, dtype: str = "float32", device: str = "cpu") -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a model folder, the model in eval mode on ``device``.

    Uses ``AutoModelForCausalLM`` with ``trust_remote_code=False`` and ``use_safetensors=True``:
    code shipped with a model never runs and pickled weights are never read.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not supported", fix=f"use one of {', '.join(DTYPES)}")
    torch = require("torch", extra="train", purpose="loading a model")
    tf = require("transformers", extra="train", purpose="loading a model")
    folder = model_folder(artifact_or_path)
    with quiet_progress():
        model = tf.AutoModelForCausalLM.from_pretrained(
            str(folder),
            dtype="auto" if dtype == "auto" else getattr(torch, dtype),
            trust_remote_code=False,
            use_safetensors=True,
            local_files_only=True,
        )
    model.to(device)
    model.eval()
    return model, load_tokenizer(folder)


def count_parameters(model: Any, *, trainable_only: bool = False) -> int:
    """Number of (unique) parameters of a torch module; tied weights count once."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total
