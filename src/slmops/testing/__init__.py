"""Helpers for tests and demos: tiny real models and corpora built in code (no downloads)."""

from __future__ import annotations

from slmops.testing.tiny import text_dataset, tiny_corpus, tiny_model

__all__ = ["text_dataset", "tiny_corpus", "tiny_model"]
