"""Fine-tuning: full, LoRA, DoRA and QLoRA as cached stages; several adapters per base; search; exact resume.

Importing this package is light (pydantic only); torch, transformers, peft, accelerate and
optuna load when a stage runs. Entry points::

    from slmops.finetune import finetune
    result = finetune("tiny", "support-data", method="lora", store=store, config={"max_steps": 50})

Modules: :mod:`~slmops.finetune.config` (configs and run options), :mod:`~slmops.finetune.data`
(examples, packing, batches), :mod:`~slmops.finetune.methods` (model preparation per method),
:mod:`~slmops.finetune.loop` (the training loop), :mod:`~slmops.finetune.checkpoint` (atomic
checkpoints), :mod:`~slmops.finetune.runs` (run dir, lock, SIGTERM), :mod:`~slmops.finetune.adapters`
(list/merge/combine), :mod:`~slmops.finetune.search` (optuna), :mod:`~slmops.finetune.api`
(the library calls the CLI uses).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "finetune": "slmops.finetune.api",
    "merge": "slmops.finetune.api",
    "combine": "slmops.finetune.api",
    "list_adapters": "slmops.finetune.adapters",
    "search": "slmops.finetune.search",
    "FullConfig": "slmops.finetune.config",
    "LoraConfig": "slmops.finetune.config",
    "DoraConfig": "slmops.finetune.config",
    "QloraConfig": "slmops.finetune.config",
    "RunOptions": "slmops.stage.context",
    "make_config": "slmops.finetune.config",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'slmops.finetune' has no attribute {name!r}")
