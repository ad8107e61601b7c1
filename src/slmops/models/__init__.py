"""Models: real architectures built in code, tokenizers trained in code, import and loading.

Importing this package is light: torch, transformers and tokenizers load inside the functions
that need them. The stages ``models.init`` and ``models.import`` live in :mod:`slmops.models.stages`.
"""

from __future__ import annotations

from slmops.models.architectures import ARCHES, ArchitectureConfig, build_config, estimate_parameters, resolve_dims
from slmops.models.corpus import builtin_corpus
from slmops.models.importer import ImportConfig, describe_model, hub_download, import_model, importer_for
from slmops.models.init import InitConfig, dataset_texts, init_model
from slmops.models.loading import count_parameters, load_model_and_tokenizer, load_tokenizer
from slmops.models.tokenizer import chat_template, save_tokenizer, strip_generation_tags, tokenizer_facts, train_tokenizer

__all__ = [
    "ARCHES",
    "ArchitectureConfig",
    "ImportConfig",
    "InitConfig",
    "build_config",
    "builtin_corpus",
    "chat_template",
    "count_parameters",
    "dataset_texts",
    "describe_model",
    "estimate_parameters",
    "hub_download",
    "import_model",
    "importer_for",
    "init_model",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "resolve_dims",
    "save_tokenizer",
    "strip_generation_tags",
    "tokenizer_facts",
    "train_tokenizer",
]
