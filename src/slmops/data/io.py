"""Loading user data into records, writing datasets, and reading dataset artifacts back.

* :func:`load_records` reads a user file (JSONL, JSON array, CSV, Parquet), validates every row and
  reports every bad one with its file, line and field; nothing is dropped silently.
* :func:`write_jsonl` writes records in the normalised form, atomically.
* :func:`read_dataset` is *the* way other code (fine-tuning, distillation, evaluation) reads a
  dataset artifact: ``read_dataset(artifact, split="train") -> list[Record]``.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmops.data.readers import FORMATS, Pos, detect_format, iter_rows, resolve_input
from slmops.data.records import Record, RecordInvalid, parse_record
from slmops.errors import DataError
from slmops.store.artifact import Artifact

log = logging.getLogger(__name__)

__all__ = [
    "FORMATS", "LoadResult", "RecordError", "dataset_splits", "detect_format", "iter_rows",
    "load_records", "read_dataset", "read_records_file", "write_jsonl",
]

#: Most problems listed in a :class:`DataError` message (all of them stay in ``LoadResult.errors``).
MAX_LISTED = 10
DATA_FILE = "data"
SPLIT_ORDER = ("train", "validation", "test")


@dataclass(frozen=True)
class RecordError:
    """One bad row: where it is and what is wrong with it."""

    file: str
    line: int | None  # file line (text formats); None for Parquet
    message: str  # every problem, ``field: message`` joined by "; "
    field: str | None = None  # the first bad field's path, e.g. ``messages[0].content``
    index: int | None = None  # 1-based element (JSON array) or row (Parquet) number
    unit: str = "line"

    @property
    def where(self) -> str:
        return str(Pos(self.line, self.index, self.unit))

    def __str__(self) -> str:
        return f"{self.file}:{self.where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "index": self.index, "field": self.field, "message": self.message}


@dataclass
class LoadResult:
    """What :func:`load_records` found: valid records, one error per bad row, and counts."""

    records: list[Record]
    errors: list[RecordError] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)


def load_records(
    path: str | Path,
    *,
    kind: str | None = None,
    format: str = "auto",
    skip_invalid: bool = False,
    field_map: Mapping[str, str] | None = None,
) -> LoadResult:
    """Read, validate and normalise every record of a user data file.

    ``kind`` forces one record kind (else each row's kind is detected); ``field_map`` renames
    fields before validation (``{"question": "input"}``). With ``skip_invalid`` False (the
    default) any bad row raises a :class:`DataError` listing the first problems with their lines;
    with True the bad rows are left out, counted (``counts["invalid"]``) and listed in ``errors``.
    A file with no valid record is always an error.
    """
    shown = str(path)
    p = resolve_input(path)
    fmt = detect_format(p, format)
    fmap = dict(field_map or {})
    records: list[Record] = []
    errors: list[RecordError] = []

    def bad(pos: Pos, message: str, fld: str | None = None) -> None:
        errors.append(RecordError(shown, pos.line, message, fld, pos.index, pos.unit))

    def unreadable(pos: Pos, message: str) -> None:
        nonlocal rows
        rows += 1
        bad(pos, message)

    rows = 0
    for pos, row in iter_rows(p, format=fmt, on_error=unreadable):
        rows += 1
        if fmap:
            row, problem = apply_field_map(row, fmap)
            if problem:
                bad(pos, problem)
                continue
        try:
            records.append(parse_record(row, kind))
        except RecordInvalid as exc:
            bad(pos, exc.detail, exc.field)
    total = rows
    counts = {
        "rows": total,
        "valid": len(records),
        "invalid": len(errors),
        "kinds": dict(sorted(Counter(r.kind for r in records).items())),
        "format": fmt,
    }
    if total == 0:
        raise DataError(
            f"no records in {shown}", why="the file is empty (or holds only blank lines / a header)", fix="point at a file with data"
        )
    if errors and not skip_invalid:
        raise _invalid_error(shown, errors, total)
    if not records:
        raise _invalid_error(shown, errors, total, all_bad=True)
    if errors:
        log.warning("%s: skipped %d invalid record(s) of %d (first: %s)", shown, len(errors), total, errors[0])
    log.info("%s: loaded %d record(s) (%s)", shown, len(records), ", ".join(f"{k}={v}" for k, v in counts["kinds"].items()))
    return LoadResult(records, errors, counts)


def _invalid_error(shown: str, errors: list[RecordError], total: int, *, all_bad: bool = False) -> DataError:
    listed = "\n  ".join(str(e) for e in errors[:MAX_LISTED])
    more = f"\n  ... and {len(errors) - MAX_LISTED} more" if len(errors) > MAX_LISTED else ""
    if all_bad:
        exc = DataError(
            f"no valid records in {shown}: all {total} are invalid",
            why=f"\n  {listed}{more}\n",
            fix="fix the data, or check --kind and --field-map",
        )
    else:
        exc = DataError(
            f"{len(errors)} invalid record(s) of {total} in {shown}",
            why=f"\n  {listed}{more}\n",
            fix="fix these rows, or pass --skip-invalid to leave invalid records out (they are counted and reported)",
        )
    exc.errors = errors  # type: ignore[attr-defined]
    return exc


def apply_field_map(row: dict[str, Any], field_map: Mapping[str, str]) -> tuple[dict[str, Any], str | None]:
    """Rename ``row``'s fields per ``field_map``; a rename onto an existing field is a problem."""
    for src, dst in field_map.items():
        if src != dst and src in row and dst in row and dst not in field_map:
            return row, f"{src}: the field map renames it to '{dst}', but the record already has '{dst}'"
    out = {k: v for k, v in row.items() if k not in field_map}
    for src, dst in field_map.items():
        if src in row:
            out[dst] = row[src]
    return out, None


def write_jsonl(records: Iterable[Record | Mapping[str, Any]], path: str | Path) -> int:
    """Write records (normalised form) as JSON Lines atomically (temp file, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for rec in records:
                line = rec.to_json() if isinstance(rec, Record) else json.dumps(dict(rec), ensure_ascii=False)
                f.write(line + "\n")
                n += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


def _dataset_dir(source: Artifact | str | Path) -> Path:
    if isinstance(source, Artifact):
        if source.kind != "dataset":
            raise DataError(
                f"artifact {source.short} is a {source.kind}, not a dataset", fix="pass a dataset artifact (made by data.import)"
            )
        return source.path
    p = Path(source).expanduser()
    if not p.exists():
        raise DataError(f"no such dataset: {source}", fix="check the path")
    return p.resolve()


def dataset_splits(source: Artifact | str | Path) -> list[str]:
    """The splits a dataset holds: ``["data"]`` for an unsplit one, else e.g. train/validation/test."""
    d = _dataset_dir(source)
    if d.is_file():
        return [d.stem]
    names = sorted(p.stem for p in d.glob("*.jsonl") if not p.name.startswith("."))
    order = {name: i for i, name in enumerate(SPLIT_ORDER)}
    return sorted(names, key=lambda n: (order.get(n, len(order)), n))


def read_dataset(source: Artifact | str | Path, split: str | None = None) -> list[Record]:
    """The records of a dataset artifact (or its folder, or one of its ``.jsonl`` files).

    ``split=None`` reads ``data.jsonl``; ``split="train"`` reads ``train.jsonl``. Asking for a split
    the dataset does not have raises a :class:`DataError` listing the splits it has.
    """
    d = _dataset_dir(source)
    if d.is_file():
        return read_records_file(d)
    name = split or DATA_FILE
    if "/" in name or "\\" in name or name.startswith("."):
        raise DataError(f"{name!r} is not a split name", fix="use a name like train, validation or test")
    file = d / f"{name}.jsonl"
    if not file.is_file():
        have = dataset_splits(d)
        if split is None:
            why = f"it is split into {', '.join(have)}" if have else "it holds no .jsonl files"
            raise DataError(f"dataset {d.name} has no unsplit data", why=why, fix=f"name a split, e.g. split={have[0]!r}" if have else None)
        raise DataError(
            f"dataset {d.name} has no split {split!r}",
            why=f"it has: {', '.join(have) or 'nothing'}",
            fix="use one of those, or split the dataset first (data.split)",
        )
    return read_records_file(file)


def read_records_file(path: str | Path) -> list[Record]:
    """Every record of a normalised JSONL file; any bad line is a :class:`DataError` (corrupt dataset)."""
    p = Path(path)
    problems: list[str] = []
    out: list[Record] = []
    for pos, row in iter_rows(p, format="jsonl", on_error=lambda pos, msg: problems.append(f"{p.name}:{pos}: {msg}")):
        try:
            out.append(parse_record(row))
        except RecordInvalid as exc:
            problems.append(f"{p.name}:{pos}: {exc.detail}")
    if problems:
        raise DataError(
            f"dataset file {p} holds {len(problems)} bad line(s)",
            why="\n  " + "\n  ".join(problems[:MAX_LISTED]),
            fix="datasets are written by slmops; re-create it with `slmops data import` (or check it with --verify)",
        )
    return out
