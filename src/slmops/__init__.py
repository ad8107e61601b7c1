"""slmops: the small-language-model lifecycle on one machine, offline.

Importing this package is light (no torch, transformers, onnxruntime or llama_cpp); heavy
libraries load inside the functions that need them, through :func:`slmops._optional.require`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from slmops.errors import SlmopsError

__all__ = ["SlmopsError", "__version__"]
