"""Data: records and their kinds, file readers, datasets, splits, deduplication and data stages.

Importing this package is light (pydantic and the standard library only; numpy loads with
:mod:`slmops.data.dedup`, pyarrow only when a Parquet file is read). The names below are loaded
on first use::

    from slmops.data import load_records, read_dataset, Record
    records = read_dataset(artifact, split="train")
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Record": "slmops.data.records",
    "Message": "slmops.data.records",
    "parse_record": "slmops.data.records",
    "detect_kind": "slmops.data.records",
    "KINDS": "slmops.data.records",
    "SCHEMA": "slmops.data.records",
    "load_records": "slmops.data.io",
    "LoadResult": "slmops.data.io",
    "RecordError": "slmops.data.io",
    "write_jsonl": "slmops.data.io",
    "read_dataset": "slmops.data.io",
    "dataset_splits": "slmops.data.io",
    "iter_rows": "slmops.data.readers",
    "split_records": "slmops.data.split",
    "dedup_records": "slmops.data.dedup",
    "inspect_dataset": "slmops.data.inspect",
}

__all__ = [  # noqa: RUF022 - one name per line, sorted
    "KINDS",
    "LoadResult",
    "Message",
    "Record",
    "RecordError",
    "SCHEMA",
    "dataset_splits",
    "dedup_records",
    "detect_kind",
    "inspect_dataset",
    "iter_rows",
    "load_records",
    "parse_record",
    "read_dataset",
    "split_records",
    "write_jsonl",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'slmops.data' has no attribute {name!r}")
