"""Structured-output metrics: is the output JSON, does it satisfy a schema, do its fields match the reference.

* :func:`parse_json_output` — the JSON object or array in a model's answer (surrounding spaces and a
  Markdown code fence are allowed; anything else around it is not).
* :func:`json_valid` — 1.0 when the output is a JSON object or array.
* :func:`schema_errors` / :func:`json_schema_valid` — a small JSON Schema validator for the keywords
  structured outputs use (``type``, ``properties``, ``required``, ``additionalProperties``,
  ``items``, ``enum``, ``const``, ``minimum``/``maximum``, ``minLength``/``maxLength``,
  ``minItems``/``maxItems``, ``pattern``). Any other keyword is refused up front
  (:func:`check_schema`) rather than silently ignored.
* :func:`json_field_match` — the share of fields (the schema's properties, else the reference's
  keys) whose values equal the reference's (strings compared case- and space-insensitively,
  numbers numerically).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from slmops.errors import ConfigError

_FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?```$", re.DOTALL)
_MISSING = object()
SUPPORTED_KEYWORDS = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "enum", "const", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "minItems", "maxItems", "pattern",
    "title", "description", "$schema", "$id", "default", "examples",
})
_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,), "null": (type(None),),
    "integer": (int,), "number": (int, float),
}


def parse_json_output(text: str) -> Any:
    """The JSON object/array a model answered with, or ``_MISSING`` (see :func:`is_json`) when there is none."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return _MISSING
    return value if isinstance(value, dict | list) else _MISSING


def is_json(value: Any) -> bool:
    return value is not _MISSING


def json_valid(prediction: str) -> float:
    """1.0 when the prediction is a JSON object or array (optionally inside a code fence)."""
    return float(is_json(parse_json_output(prediction)))


def check_schema(schema: Any, where: str = "--schema") -> None:
    """Refuse a schema that uses keywords this validator does not implement (so nothing is skipped silently)."""
    if not isinstance(schema, dict):
        raise ConfigError(f"{where} must be a JSON object (a JSON Schema)", fix='e.g. {"type": "object", "required": ["city"]}')
    unknown = sorted(set(schema) - SUPPORTED_KEYWORDS)
    if unknown:
        raise ConfigError(
            f"{where} uses JSON Schema keyword(s) slmops does not check: {', '.join(unknown)}",
            fix=f"use only: {', '.join(sorted(SUPPORTED_KEYWORDS - {'title', 'description', '$schema', '$id', 'default', 'examples'}))}",
        )
    types = schema.get("type")
    for t in types if isinstance(types, list) else [types] if types else []:
        if t not in _TYPES:
            raise ConfigError(f"{where}: unknown type {t!r}", fix=f"use one of {', '.join(_TYPES)}")
    for name, sub in (schema.get("properties") or {}).items():
        check_schema(sub, f"{where}.properties.{name}")
    if isinstance(schema.get("items"), dict):
        check_schema(schema["items"], f"{where}.items")
    if isinstance(schema.get("additionalProperties"), dict):
        check_schema(schema["additionalProperties"], f"{where}.additionalProperties")


def _is_type(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES[name])


#: Length keywords: (keyword, applies to str or list, too short?, message).
_LENGTHS = (("minLength", str, True, "shorter than {}"), ("maxLength", str, False, "longer than {}"),
            ("minItems", list, True, "fewer than {} items"), ("maxItems", list, False, "more than {} items"))


def _length_errors(value: str | list[Any], schema: dict[str, Any], path: str) -> list[str]:
    errs = []
    for key, kind, minimum, message in _LENGTHS:
        if isinstance(value, kind) and key in schema and (len(value) < schema[key] if minimum else len(value) > schema[key]):
            errs.append(f"{path}: {message.format(schema[key])}")
    return errs


def schema_errors(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Every way ``value`` breaks ``schema`` (empty when it conforms), as ``path: problem`` strings."""
    errs: list[str] = []
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        if not any(_is_type(value, t) for t in names):
            return [f"{path}: expected {'/'.join(names)}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errs.append(f"{path}: {value!r} is not one of {schema['enum']!r}")
    if "const" in schema and value != schema["const"]:
        errs.append(f"{path}: must be {schema['const']!r}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        for key, bad in (("minimum", lambda lim: value < lim), ("maximum", lambda lim: value > lim),
                         ("exclusiveMinimum", lambda lim: value <= lim), ("exclusiveMaximum", lambda lim: value >= lim)):
            if key in schema and bad(schema[key]):
                errs.append(f"{path}: {value} breaks {key} {schema[key]}")
    if isinstance(value, str | list):
        errs += _length_errors(value, schema, path)
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        errs.append(f"{path}: does not match {schema['pattern']!r}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errs += schema_errors(item, schema["items"], f"{path}[{i}]")
    if isinstance(value, dict):
        props: dict[str, Any] = schema.get("properties") or {}
        errs += [f"{path}: missing required {k!r}" for k in schema.get("required", []) if k not in value]
        for key, item in value.items():
            if key in props:
                errs += schema_errors(item, props[key], f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                errs.append(f"{path}: unexpected property {key!r}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errs += schema_errors(item, schema["additionalProperties"], f"{path}.{key}")
    return errs


def json_schema_valid(prediction: str, schema: dict[str, Any]) -> float:
    """1.0 when the prediction is JSON that satisfies ``schema``."""
    value = parse_json_output(prediction)
    return float(is_json(value) and not schema_errors(value, schema))


def _canon(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return " ".join(value.lower().split())
    if isinstance(value, list):
        return [_canon(v) for v in value]
    if isinstance(value, dict):
        return {k: _canon(v) for k, v in value.items()}
    return value


def field_names(reference: Any, schema: dict[str, Any] | None = None, fields: Sequence[str] | None = None) -> list[str]:
    """The fields compared: explicit ``fields``, else the schema's properties, else the reference's keys."""
    if fields:
        return list(fields)
    if schema and schema.get("properties"):
        return list(schema["properties"])
    return list(reference) if isinstance(reference, dict) else []


def json_field_match(prediction: str, reference: str, *, schema: dict[str, Any] | None = None, fields: Sequence[str] | None = None) -> float | None:
    """Share of fields whose values equal the reference's; 0.0 for non-JSON output, None when the reference has no fields."""
    ref = parse_json_output(reference)
    if not is_json(ref):
        return None
    names = field_names(ref, schema, fields)
    if not names:
        return None
    pred = parse_json_output(prediction)
    if not isinstance(pred, dict):
        return 0.0
    assert isinstance(ref, dict)
    hits = sum(1 for k in names if k in pred and _canon(pred[k]) == _canon(ref.get(k, _MISSING)))
    return hits / len(names)
