"""Quality gates: ``exact_match>=0.9`` or ``accuracy>=0.95*ref``, checked against a report's metrics.

Grammar: ``METRIC OP THRESHOLD`` with OP one of ``>= <= > < ==`` and THRESHOLD a number, ``ref``,
or ``FACTOR*ref`` (the same metric of the reference run, times FACTOR). A failed gate makes
:func:`enforce` raise :class:`GateFailed`, whose exit code (3) tells CI a quality gate failed, as
opposed to an error (1) or a usage mistake (2).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from slmops.errors import ConfigError, SlmopsError

GATE_EXIT_CODE = 3
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq,
}
_GATE = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_.]*)\s*(?P<op>>=|<=|==|>|<)\s*"
    r"(?:(?P<factor>[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*\*\s*)?(?P<value>ref|[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*$"
)


class GateFailed(SlmopsError):
    """One or more quality gates (or validation checks) failed."""

    exit_code = GATE_EXIT_CODE


@dataclass(frozen=True)
class Gate:
    """A parsed gate; ``factor`` is set when the threshold is relative to the reference."""

    text: str
    metric: str
    op: str
    value: float | None
    factor: float | None = None

    @property
    def relative(self) -> bool:
        return self.factor is not None


@dataclass(frozen=True)
class GateResult:
    gate: str
    metric: str
    op: str
    threshold: float | None
    value: float | None
    passed: bool
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_gate(text: str) -> Gate:
    """Parse one ``--gate`` expression; a malformed one is a :class:`ConfigError` naming the flag."""
    m = _GATE.match(text)
    if not m:
        raise ConfigError(
            f"--gate {text!r} is not a gate", why="expected METRIC OP THRESHOLD with OP one of >=, <=, >, <, ==",
            fix='e.g. --gate "exact_match>=0.9" or --gate "accuracy>=0.95*ref" (with --ref)',
        )
    if m["value"] == "ref":
        return Gate(text.strip(), m["metric"], m["op"], None, float(m["factor"]) if m["factor"] else 1.0)
    if m["factor"]:
        raise ConfigError(f"--gate {text!r}: only ref can be multiplied", fix='write e.g. "accuracy>=0.95*ref"')
    return Gate(text.strip(), m["metric"], m["op"], float(m["value"]))


def parse_gates(texts: Sequence[str]) -> list[Gate]:
    return [parse_gate(t) for t in texts]


def gate_metrics(gates: Sequence[Gate]) -> list[str]:
    """The metrics the gates need (so a caller can make sure they are computed)."""
    return list(dict.fromkeys(g.metric for g in gates))


def check_gates(gates: Sequence[Gate], metrics: Mapping[str, Any], ref_metrics: Mapping[str, Any] | None = None) -> list[GateResult]:
    """Evaluate every gate. A gate on a metric the run did not produce, or a relative gate without a reference, is an error."""
    results = []
    for g in gates:
        if g.metric not in metrics:
            raise ConfigError(f"--gate {g.text!r} names {g.metric}, which this run did not compute",
                              why=f"computed: {', '.join(sorted(metrics)) or 'nothing'}", fix=f"add it with --metrics {g.metric}")
        if g.relative:
            if ref_metrics is None:
                raise ConfigError(f"--gate {g.text!r} compares with ref, but no reference was given", fix="pass --ref REF")
            if ref_metrics.get(g.metric) is None:
                raise ConfigError(f"--gate {g.text!r}: the reference has no {g.metric}", fix="evaluate the reference with the same --metrics")
            threshold: float | None = float(ref_metrics[g.metric]) * (g.factor or 1.0)
        else:
            threshold = g.value
        value = metrics[g.metric]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            results.append(GateResult(g.text, g.metric, g.op, threshold, None, False, "no example could be scored"))
            continue
        assert threshold is not None
        results.append(GateResult(g.text, g.metric, g.op, threshold, float(value), _OPS[g.op](float(value), threshold)))
    return results


def enforce(results: Sequence[GateResult], what: str = "quality gate") -> None:
    """Raise :class:`GateFailed` listing the failed gates (nothing when all passed)."""
    failed = [r for r in results if not r.passed]
    if failed:
        detail = "; ".join(
            f"{r.gate} (got {r.value:.4g}, needs {r.op} {r.threshold:.4g})" if r.value is not None and r.threshold is not None
            else f"{r.gate} ({r.reason})" for r in failed
        )
        raise GateFailed(f"{len(failed)} {what}(s) failed", why=detail, fix="see the report; improve the model or revisit the threshold")


def evaluate_gates(texts: Sequence[str], metrics: Mapping[str, Any], ref_metrics: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Parse and check gate strings; one dict per gate with ``gate``, ``passed`` and a one-line ``detail`` (recipes use this)."""
    out = []
    for r in check_gates(parse_gates(texts), metrics, ref_metrics):
        d = r.to_dict()
        d["detail"] = (f"{r.metric} = {r.value:.4g}, needs {r.op} {r.threshold:.4g}" if r.value is not None and r.threshold is not None
                       else f"{r.metric}: {r.reason}")
        out.append(d)
    return out
