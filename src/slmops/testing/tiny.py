"""Tiny real models and corpora for tests and demos, built in code through the normal stage path.

``tiny_model("qwen2")`` runs ``models.init`` through the cached runner, so a second call with the
same arguments is a cache hit and the artifact has the usual manifest and lineage.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from slmops.models.corpus import builtin_corpus
from slmops.store.artifact import Artifact
from slmops.store.registry import Store


def tiny_corpus(n: int = 400, *, seed: int = 0) -> list[str]:
    """``n`` short deterministic English texts (the start of the built-in tokenizer corpus)."""
    return builtin_corpus(n, seed=seed)


def text_dataset(texts: Iterable[str], *, store: Store, name: str | None = None) -> Artifact:
    """Store ``texts`` as a dataset artifact (``data.jsonl`` of normalised text records, as ``data.import`` writes)."""
    from slmops.data.io import write_jsonl
    from slmops.data.records import parse_record

    with store.staging() as tmp:
        write_jsonl([parse_record({"text": t}) for t in texts], tmp / "data.jsonl")
        return store.commit(tmp, kind="dataset", format="jsonl", meta={"source": "slmops.testing.text_dataset"}, name=name)


def tiny_model(
    arch: str = "llama",
    store: Store | None = None,
    name: str | None = None,
    data_texts: Iterable[str] | None = None,
    **overrides: Any,
) -> Artifact:
    """A tiny random ``arch`` model (llama, qwen2 or phi3) made by ``models.init``.

    ``data_texts`` trains the tokenizer on those texts (stored first as a dataset artifact, which
    becomes the model's ``data`` parent); ``overrides`` are further ``models.init`` config fields
    (``size``, ``hidden_size``, ``vocab_size``, ``seed`` …).
    """
    from slmops.stage.runner import run_stage

    own = store is None
    s = store if store is not None else Store()
    try:
        inputs = {"data": text_dataset(data_texts, store=s)} if data_texts is not None else {}
        return run_stage("models.init", inputs, {"arch": arch, **overrides}, store=s, output_name=name).artifact
    finally:
        if own:
            s.close()
