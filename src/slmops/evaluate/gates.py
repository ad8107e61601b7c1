"""Quality gates, the one implementation: ``exact_match>=0.9`` or ``accuracy>=0.95*ref``, checked against metrics.

Grammar: ``METRIC OP THRESHOLD`` with OP one of ``>= <= > < ==`` and THRESHOLD a number, ``ref``,
``FACTOR*ref`` (the same metric of the reference, times FACTOR) or either ref form plus or minus a
number (``accuracy>=ref-0.02``). Every caller goes through here:

* ``slmops eval --gate`` and ``--ref`` (:func:`parse_gates`, :func:`check_gates`, :func:`enforce`);
* recipe steps' ``gates:`` (:func:`evaluate_gates`), where ``ref`` is the metrics of the step's
  ``ref:`` (another step or any reference) or of its ``ref`` input;
* the limits in configs — parity's ``max_kl``, optimize's ``max_size_bytes``, a device profile's
  ``max_rss_bytes`` — turned into gates by :func:`limit_gates` from a table of
  ``field -> (metric, op)``.

A check gives one :class:`GateResult` per gate (the same shape everywhere: ``to_dict()`` is what
reports and ``--json`` carry). A metric the run reports as ``None`` (or NaN) fails its gate
("no example could be scored"), unless the caller says such a metric was simply not measured
(``unmeasured="skip"``: parity without answered records); a metric the run does not report at all
is a :class:`~slmops.errors.ConfigError`. :func:`enforce` raises :class:`GateFailed`, whose exit
code (3) tells CI a quality gate failed, as opposed to an error (1) or a usage mistake (2).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from slmops.errors import ConfigError, SlmopsError

GATE_EXIT_CODE = 3
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq,
}
_NUM = r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?"
_GATE = re.compile(
    rf"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_.]*)\s*(?P<op>>=|<=|==|>|<)\s*"
    rf"(?:(?P<factor>{_NUM})\s*\*\s*)?(?P<value>ref|{_NUM})(?:\s*(?P<sign>[-+])\s*(?P<offset>\d*\.?\d+(?:[eE][-+]?\d+)?))?\s*$"
)
#: A config's limit fields and the gates they stand for: ``{"max_kl": ("kl_mean", "<=")}``.
Limits = Mapping[str, tuple[str, str]]


class GateFailed(SlmopsError):
    """One or more quality gates (or validation checks) failed."""

    exit_code = GATE_EXIT_CODE


@dataclass(frozen=True)
class Gate:
    """A parsed gate; ``factor`` is set when the threshold is relative to the reference.

    ``name`` is the config field a limit gate came from (``max_kl``); None for a written gate.
    """

    text: str
    metric: str
    op: str
    value: float | None
    factor: float | None = None
    offset: float = 0.0
    name: str | None = None

    @property
    def relative(self) -> bool:
        return self.factor is not None


@dataclass(frozen=True)
class GateResult:
    """The outcome of one gate: the threshold it was held to, the value measured, pass or fail (or skipped)."""

    gate: str
    metric: str
    op: str
    threshold: float | None
    value: float | None
    passed: bool
    reason: str | None = None
    skipped: bool = False
    name: str | None = None

    @property
    def detail(self) -> str:
        """One line: ``accuracy = 0.8, needs >= 0.9`` (or why there was no value)."""
        if self.value is not None and self.threshold is not None:
            return f"{self.metric} = {_num(self.value)}, needs {self.op} {_num(self.threshold)}"
        return f"{self.metric}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "detail": self.detail}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GateResult:
        """Back from :meth:`to_dict` (as a report or a manifest keeps it)."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


def _num(v: float) -> str:
    """Whole numbers in full (bytes, counts), others to 4 significant digits."""
    return str(int(v)) if v.is_integer() and abs(v) < 1e18 else f"{v:.4g}"


def parse_gate(text: str, *, flag: str = "--gate") -> Gate:
    """Parse one gate expression; a malformed one is a :class:`ConfigError` naming ``flag``."""
    m = _GATE.match(text)
    if not m:
        raise ConfigError(
            f"{flag} {text!r} is not a gate", why="expected METRIC OP THRESHOLD with OP one of >=, <=, >, <, ==",
            fix=f'e.g. {flag} "exact_match>=0.9" or {flag} "accuracy>=0.95*ref" (with a reference)',
        )
    offset = float(m["offset"]) * (-1.0 if m["sign"] == "-" else 1.0) if m["offset"] else 0.0
    if m["value"] == "ref":
        return Gate(text.strip(), m["metric"], m["op"], None, float(m["factor"]) if m["factor"] else 1.0, offset)
    if m["factor"] or m["offset"]:
        raise ConfigError(f"{flag} {text!r}: only ref can be multiplied or offset", fix='write e.g. "accuracy>=0.95*ref" or "accuracy>=ref-0.02"')
    return Gate(text.strip(), m["metric"], m["op"], float(m["value"]))


def parse_gates(texts: Sequence[str], *, flag: str = "--gate") -> list[Gate]:
    return [parse_gate(t, flag=flag) for t in texts]


def limit_gates(cfg: Any, limits: Limits) -> list[Gate]:
    """The gates a config's limit fields stand for (fields left at None are no gate)."""
    gates = []
    for field, (metric, op) in limits.items():
        limit = getattr(cfg, field, None)
        if limit is None:
            continue
        gates.append(Gate(f"{metric}{op}{limit}", metric, op, float(limit), name=field))
    return gates


def gate_metrics(gates: Sequence[Gate]) -> list[str]:
    """The metrics the gates need (so a caller can make sure they are computed)."""
    return list(dict.fromkeys(g.metric for g in gates))


def _threshold(g: Gate, ref_metrics: Mapping[str, Any] | None) -> float | None:
    if not g.relative:
        return g.value
    if ref_metrics is None:
        raise ConfigError(f"gate {g.text!r} compares with ref, but no reference was given",
                          fix="pass --ref REF (in a recipe: ref: ${step} on the step)")
    if ref_metrics.get(g.metric) is None:
        raise ConfigError(f"gate {g.text!r}: the reference has no {g.metric}", fix="measure the reference with the same metrics")
    return float(ref_metrics[g.metric]) * (g.factor or 1.0) + g.offset


def check_gates(gates: Sequence[Gate], metrics: Mapping[str, Any], ref_metrics: Mapping[str, Any] | None = None, *,
                unmeasured: Literal["fail", "skip"] = "fail") -> list[GateResult]:
    """Evaluate every gate against ``metrics`` (and ``ref_metrics`` for ``ref`` thresholds).

    A gate on a metric that ``metrics`` does not hold, or a relative gate without a reference, is a
    :class:`ConfigError`. A metric that is None or NaN fails its gate, or with ``unmeasured="skip"``
    is reported as skipped (passed, since nothing was measured to fail).
    """
    results = []
    for g in gates:
        if g.metric not in metrics:
            raise ConfigError(f"gate {g.text!r} names {g.metric}, which this run did not compute",
                              why=f"computed: {', '.join(sorted(metrics)) or 'nothing'}", fix=f"compute it (slmops eval: --metrics {g.metric})")
        threshold = _threshold(g, ref_metrics)
        value = metrics[g.metric]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            skip = unmeasured == "skip"
            results.append(GateResult(g.text, g.metric, g.op, threshold, None, skip, "not measured" if skip else "no example could be scored",
                                      skipped=skip, name=g.name))
            continue
        if not isinstance(value, int | float):
            raise ConfigError(f"gate {g.text!r}: {g.metric} is {value!r}, not a number", fix="gate on a numeric metric")
        assert threshold is not None
        results.append(GateResult(g.text, g.metric, g.op, threshold, float(value), _OPS[g.op](float(value), threshold), name=g.name))
    return results


def enforce(results: Sequence[GateResult], *, where: str | None = None,
            fix: str = "see the report; improve the model or revisit the threshold") -> None:
    """Raise :class:`GateFailed` naming the failed gates and their margins (nothing when all passed).

    ``where`` says what was gated (``step 'eval'``, an artifact): ``quality gate accuracy>=0.9 failed at step 'eval'``.
    """
    failed = [r for r in results if not r.passed]
    if not failed:
        return
    measured = [r for r in results if not r.skipped]
    head = f"quality gate {failed[0].gate} failed" if len(failed) == 1 else f"{len(failed)} of {len(measured)} quality gates failed"
    skipped = len(results) - len(measured)
    why = "; ".join(r.detail for r in failed) + (f" ({skipped} more not measured)" if skipped else "")
    raise GateFailed(head + (f" at {where}" if where else ""), why=why, fix=fix)


def evaluate_gates(texts: Sequence[str], metrics: Mapping[str, Any], ref_metrics: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Parse and check gate strings; one dict per gate (:meth:`GateResult.to_dict`, with ``passed`` and ``detail``)."""
    return [r.to_dict() for r in check_gates(parse_gates(texts), metrics, ref_metrics)]
