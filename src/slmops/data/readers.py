"""File readers: JSONL, JSON arrays, CSV and Parquet rows as ``(position, dict)``, with positions.

Each reader yields ``(pos, row)`` where ``pos`` is a :class:`Pos`: the 1-based file line for the
text formats (JSONL: the line itself, blank lines skipped but counted; CSV: the line where the row
starts, the header being line 1; JSON arrays: the line where the element starts, plus the element's
1-based index) and the 1-based row number for Parquet. A malformed row (bad JSON, a value that is
not an object, a CSV row with the wrong number of fields) is not raised midway: it is passed to
``on_error(pos, message)`` and reading goes on. Without ``on_error``, the reader raises one
:class:`~slmops.errors.DataError` listing them after the whole file was read. Problems with the
file as a whole (missing, not UTF-8, not a JSON array) raise at once.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmops.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "json", "csv", "parquet")
EXTENSIONS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".jsonlines": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet", ".pq": "parquet",
}
#: CSV cells holding these fields are JSON-decoded (nested values cannot be plain CSV text).
CSV_JSON_FIELDS = ("messages", "meta")


@dataclass(frozen=True)
class Pos:
    """Where a row is: ``line`` in a text file and/or ``index`` (1-based element or row)."""

    line: int | None = None
    index: int | None = None
    unit: str = "line"

    def __str__(self) -> str:
        if self.unit == "row":
            return f"row {self.index}"
        if self.unit == "element":
            return f"{self.line} (element {self.index})" if self.line is not None else f"element {self.index}"
        return str(self.line)


OnError = Callable[[Pos, str], None]
Rows = Iterator[tuple[Pos, dict[str, Any]]]


def resolve_input(path: str | Path) -> Path:
    """An existing input file, resolved; :class:`DataError` naming the path otherwise."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"no such file: {path}", fix="check the path (relative paths start from the current directory)")
    if p.is_dir():
        raise DataError(f"{path} is a folder, not a file", fix="give the data file itself (.jsonl, .json, .csv or .parquet)")
    return p.resolve()


def detect_format(path: str | Path, format: str = "auto") -> str:
    """The reader to use: ``format`` unless it is ``auto``, else from the file's extension."""
    if format != "auto":
        if format not in FORMATS:
            raise ConfigError(f"--format {format} is not supported", fix=f"use one of: auto, {', '.join(FORMATS)}")
        return format
    suffix = Path(path).suffix.lower()
    if suffix not in EXTENSIONS:
        raise ConfigError(
            f"cannot tell the format of {Path(path).name} from its extension {suffix or '(none)'}",
            fix=f"pass --format {'|'.join(FORMATS)}, or use one of the extensions {', '.join(EXTENSIONS)}",
        )
    return EXTENSIONS[suffix]


def iter_rows(path: str | Path, *, format: str = "auto", on_error: OnError | None = None) -> Rows:
    """Rows of ``path`` in its format; see the module docstring for positions and errors."""
    p = resolve_input(path)
    fmt = detect_format(p, format)
    problems: list[str] = []

    def collect(pos: Pos, msg: str) -> None:
        problems.append(f"{path}:{pos}: {msg}")

    reader = {"jsonl": read_jsonl, "json": read_json, "csv": read_csv, "parquet": read_parquet}[fmt]
    yield from reader(p, on_error or collect)
    if problems:
        shown = "\n  ".join(problems[:10])
        raise DataError(f"{len(problems)} malformed row(s) in {path}", why=f"\n  {shown}", fix="fix these rows")


def _type_name(value: Any) -> str:
    names = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def read_jsonl(path: Path, on_error: OnError) -> Rows:
    """JSON Lines: one object per line; positions are 1-based file lines."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                on_error(Pos(n), f"not valid UTF-8 ({exc.reason} at byte {exc.start})")
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                where = f"column {exc.colno}" if exc.pos < len(line.rstrip("\r\n")) else "end of line"
                on_error(Pos(n), f"bad JSON: {exc.msg} ({where})")
                continue
            if not isinstance(obj, dict):
                on_error(Pos(n), f"expected a JSON object, got {_type_name(obj)}")
                continue
            yield Pos(n), obj


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text", why=f"{exc.reason} at byte {exc.start}", fix="re-save the file as UTF-8") from exc


def read_json(path: Path, on_error: OnError) -> Rows:
    """A JSON array of objects; positions give the element's start line and its 1-based index.

    A ``.json`` file that starts with ``{`` is read as JSON Lines (a common naming slip).
    """
    text = _read_text(path)
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if pos < len(text) and text[pos] == "{":
        log.info("%s starts with an object, not an array: reading it as JSON Lines", path.name)
        yield from read_jsonl(path, on_error)
        return
    if pos >= len(text):
        return
    if text[pos] != "[":
        raise DataError(
            f"{path} is not a JSON array", why=f"it starts with {text[pos]!r}", fix="use a JSON array of objects, or JSON Lines (.jsonl)"
        )
    pos, line, last, index = pos + 1, 1, 0, 0
    while True:
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == "]" and index == 0:
            pos += 1
            break
        line += text.count("\n", last, pos)
        last = pos
        index += 1
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}:{exc.lineno}: bad JSON in element {index}",
                why=f"{exc.msg} (column {exc.colno}); the rest of the array cannot be read",
                fix="fix the JSON (a missing comma or quote is the usual cause), or convert the file to JSON Lines",
            ) from exc
        if isinstance(obj, dict):
            yield Pos(line, index, "element"), obj
        else:
            on_error(Pos(line, index, "element"), f"expected a JSON object, got {_type_name(obj)}")
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos < len(text) and text[pos] == "]":
            pos += 1
            break
        else:
            at = text.count("\n", 0, pos) + 1
            raise DataError(f"{path}:{at}: expected ',' or ']' after element {index}", fix="fix the JSON array")
    if _skip_ws(text, pos) < len(text):
        raise DataError(f"{path}: extra data after the JSON array", fix="a .json file holds one array; use .jsonl for one object per line")


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def read_csv(path: Path, on_error: OnError) -> Rows:
    """CSV with a header row (line 1); empty cells count as absent; ``messages``/``meta`` cells are JSON."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                return
            header = [h.strip() for h in header]
            dupes = sorted({h for h in header if header.count(h) > 1})
            if dupes or "" in header:
                why = f"duplicate columns: {', '.join(dupes)}" if dupes else "a column has no name"
                raise DataError(f"{path}:1: bad CSV header", why=why, fix="give every column a distinct name")
            while True:
                start = reader.line_num + 1
                try:
                    cells = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    on_error(Pos(start), f"bad CSV: {exc}")
                    continue
                if not cells or (len(cells) == 1 and not cells[0].strip()):
                    continue
                if len(cells) != len(header):
                    on_error(Pos(start), f"row has {len(cells)} fields but the header has {len(header)}")
                    continue
                row, bad = _decode_nested({k: c for k, c in zip(header, cells, strict=True) if c != ""})
                if bad:
                    on_error(Pos(start), bad)
                    continue
                yield Pos(start), row
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text", why=f"{exc.reason} at byte {exc.start}", fix="re-save the file as UTF-8") from exc


def read_parquet(path: Path, on_error: OnError) -> Rows:
    """Parquet via pyarrow (``slmops[data]``); positions are 1-based rows; nulls count as absent."""
    from slmops._optional import require

    pq = require("pyarrow.parquet", extra="data", purpose="reading Parquet files")
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a non-Parquet file
        raise DataError(f"{path} is not a readable Parquet file", why=str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
    n = 0
    for batch in pf.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            n += 1
            row, bad = _decode_nested(_drop_nulls(row))
            if bad:
                on_error(Pos(index=n, unit="row"), bad)
                continue
            yield Pos(index=n, unit="row"), row


def _decode_nested(row: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """JSON-decode ``messages``/``meta`` given as text (CSV cells, string columns)."""
    for key in CSV_JSON_FIELDS:
        if isinstance(row.get(key), str):
            try:
                row[key] = json.loads(row[key])
            except json.JSONDecodeError as exc:
                return row, f"{key}: value is not valid JSON ({exc.msg})"
    return row, None


def _drop_nulls(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if value is None:
            continue
        if isinstance(value, list):
            value = [_drop_nulls(v) if isinstance(v, dict) else v for v in value]
        elif isinstance(value, dict):
            value = _drop_nulls(value) if key != "meta" else value
        out[key] = value
    return out
