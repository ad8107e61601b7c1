"""The files of an evaluation report artifact: ``report.json``, ``report.md`` and (with --log-samples) ``samples.jsonl``.

``report.json`` (schema ``slmops.eval/1``) holds the target's description (for a URL: the URL and
model name, never a key), the data digest and split, the resolved config, the metrics, counts,
timing and, when a reference run was given, its metrics and the retention of each metric.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slmops.errors import StoreError
from slmops.evaluate.config import EvalConfig, higher_is_better
from slmops.evaluate.run import EvalResult, retention_pct
from slmops.store.artifact import Artifact

SCHEMA = "slmops.eval/1"
REPORT = "report.json"


def load_report(artifact: Artifact) -> dict[str, Any]:
    """The ``report.json`` of a report artifact (eval, bench, validate or compare)."""
    if artifact.kind != "report":
        raise StoreError(f"artifact {artifact.short} is a {artifact.kind}, not a report", fix="pass a report made by slmops eval or bench")
    path = artifact.file(REPORT)
    if not path.is_file():
        raise StoreError(f"report {artifact.short} has no {REPORT}", why="it was not written by slmops eval, bench or compare")
    return json.loads(path.read_text(encoding="utf-8"))


def build_report(result: EvalResult, cfg: EvalConfig, *, data: str, split: str, ref: dict[str, Any] | None = None) -> dict[str, Any]:
    report: dict[str, Any] = {
        "schema": SCHEMA, "target": result.target, "data": {"digest": data, "split": split},
        "config": cfg.model_dump(mode="json"), "metrics": result.metrics, "counts": result.counts, "timing": result.timing,
        "higher_is_better": {k: higher_is_better(k) for k in result.metrics},
    }
    if ref is not None:
        report["ref"] = ref
        report["retention_pct"] = retention_pct(result.metrics, ref.get("metrics") or {})
    return report


def fmt_value(v: Any) -> str:
    """A metric as a report table shows it: floats to 4 significant digits, ``–`` for nothing (eval and parity reports)."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown(report: dict[str, Any]) -> str:
    t = report["target"]
    who = f"{t.get('model')} at {t.get('url')}" if t.get("kind") == "http" else f"{t.get('label')} ({t.get('runtime')}, {t.get('format')})"
    lines = [f"# Evaluation of {who}", "", (f"Data `sha256:{report['data']['digest'][:12]}` split `{report['data']['split']}`, "
                                            f"{report['counts']['examples']} examples, {report['counts']['errors']} errors."), ""]
    ref = report.get("ref")
    head = "| metric | value |" + (" ref | retention % |" if ref else "")
    lines += [head, "|---|---|" + ("---|---|" if ref else "")]
    for k, v in report["metrics"].items():
        row = f"| {k} | {fmt_value(v)} |"
        if ref:
            row += f" {fmt_value((ref.get('metrics') or {}).get(k))} | {fmt_value(report.get('retention_pct', {}).get(k))} |"
        lines.append(row)
    return "\n".join(lines) + "\n"


def write_eval_report(out: Path, report: dict[str, Any], samples: list[dict[str, Any]] | None) -> None:
    # backslashreplace: a lone surrogate in a model's output is written as its JSON escape, not a crash
    text = json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n"
    (out / REPORT).write_text(text, encoding="utf-8", errors="backslashreplace")
    (out / "report.md").write_text(markdown(report), encoding="utf-8", errors="backslashreplace")
    if samples is not None:
        with open(out / "samples.jsonl", "w", encoding="utf-8", errors="backslashreplace") as f:
            f.writelines(json.dumps(s, ensure_ascii=False, default=str) + "\n" for s in samples)
