"""The optimizer: build several exports of a model, measure each, and pick the best that passes every gate.

For each target (``gguf:q4_k_m``, ``gguf:q8_0``, ``onnx:int4`` …) :func:`optimize` runs the export
stage through the cached runner (``export.gguf``; ``export.onnx`` when that stage is registered,
otherwise the target is skipped with the reason; ``onnx:int4`` is that stage's int4 default, the
mixed-precision export that is no worse than ``gguf:q4_k_m`` in KL — see docs/export.md), then the ``parity`` stage against the model
(KL, top-1 agreement, perplexity, greedy match — each a report artifact linked to both), then
measures size on disk, decode speed, TTFT and peak RSS (in a fresh process by default). A
candidate *passes* when its parity gates pass and it fits :data:`OPTIMIZE_LIMITS` (``max_size_bytes``,
``max_rss_bytes``, ``min_tokens_per_s``, checked as gates by :mod:`slmops.evaluate.gates`); the
chosen one is the smallest (or fastest) of those.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from slmops import formats
from slmops.errors import ConfigError, SlmopsError
from slmops.evaluate.gates import Limits, check_gates, limit_gates
from slmops.export.parity import DEFAULT_GATES, PARITY_LIMITS
from slmops.store.artifact import Artifact
from slmops.units import parse_size

log = logging.getLogger(__name__)

ONNX_PRECISIONS = ("int4", "int8", "fp16", "fp32")
_ONNX_FIELDS = ("precision", "qtype", "dtype", "bits")
#: The optimizer's own limits (beyond parity's) as gates on a candidate's measured row.
OPTIMIZE_LIMITS: Limits = {
    "max_size_bytes": ("size_bytes", "<="), "max_rss_bytes": ("peak_rss_bytes", "<="), "min_tokens_per_s": ("decode_tokens_per_s", ">="),
}


def parse_target(text: str) -> tuple[str, str]:
    """``("gguf", "q4_k_m")`` from ``gguf:q4_k_m``; :class:`ConfigError` for an unknown format or type."""
    from slmops.export.gguf_quantize import QTYPES

    fmt, sep, q = text.strip().lower().partition(":")
    if not sep or formats.by_target(fmt) is None:
        raise ConfigError(f"--targets entry {text!r} is not FORMAT:TYPE", fix="write e.g. gguf:q4_k_m,gguf:q8_0,onnx:int4")
    if fmt == "gguf" and q not in QTYPES:
        raise ConfigError(f"--targets entry {text!r} names an unknown GGUF type", fix=f"use one of {', '.join(QTYPES)}")
    if fmt == "onnx" and q not in ONNX_PRECISIONS:
        raise ConfigError(f"--targets entry {text!r} names an unknown ONNX precision", fix=f"use one of {', '.join(ONNX_PRECISIONS)}")
    return fmt, q


class OptimizeConfig(BaseModel):
    """Config of the ``optimize`` stage."""

    model_config = ConfigDict(extra="forbid")

    targets: list[str] = Field(default_factory=lambda: ["gguf:q8_0", "gguf:q4_k_m"], description="Candidates as FORMAT:TYPE (gguf:q4_k_m, onnx:int4 …)")
    objective: Literal["smallest", "fastest"] = Field("smallest", description="Which passing candidate to choose")
    max_kl: float | None = Field(DEFAULT_GATES["max_kl"], ge=0, description="Gate: mean KL divergence from the model (nats)")
    min_top1: float | None = Field(None, ge=0, le=1, description="Gate: top-1 agreement with the model")
    max_ppl_increase: float | None = Field(None, ge=0, description="Gate: relative perplexity increase (0.05 = 5%)")
    min_greedy_match: float | None = Field(None, ge=0, le=1, description="Gate: share of identical greedy outputs")
    max_task_drop: float | None = Field(None, ge=0, description="Gate: largest allowed drop of the task score")
    max_size_bytes: int | None = Field(None, ge=1, description="Gate: largest size on disk (accepts 500MB, 1.5GiB …)")
    max_rss_bytes: int | None = Field(None, ge=1, description="Gate: largest peak resident memory while generating (accepts 2GB …)")
    min_tokens_per_s: float | None = Field(None, gt=0, description="Gate: slowest acceptable decode speed")
    parity_texts: int = Field(16, ge=1, description="Records scored by each parity check")
    parity_tokens: int = Field(128, ge=2, description="Tokens scored per record")
    greedy_prompts: int = Field(4, ge=0, description="Greedy generations compared per candidate")
    bench_new_tokens: int = Field(32, ge=2, description="Tokens generated per speed run")
    bench_prompt_tokens: int = Field(32, ge=1, description="Prompt length of the speed runs")
    bench_runs: int = Field(2, ge=1, description="Speed runs per candidate (the median is kept)")
    isolate: bool = Field(True, description="Measure speed and memory in a fresh process per candidate (true peak RSS)")

    @field_validator("max_size_bytes", "max_rss_bytes", mode="before")
    @classmethod
    def _size(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None:
            return None
        try:
            return parse_size(v, flag=str(info.field_name))
        except ConfigError as exc:
            raise ValueError(exc.message) from None

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one target")
        for t in v:
            parse_target(t)
        return [t.strip().lower() for t in v]


def _onnx_config(qtype: str) -> dict[str, Any]:
    from slmops.stage import all_stages

    st = all_stages().get("export.onnx")
    if st is None:
        raise ConfigError("stage export.onnx is not registered", why="this installation has no ONNX exporter", fix="drop the onnx: targets, or install a version with ONNX export")
    field = next((f for f in _ONNX_FIELDS if f in st.config.model_fields), None)
    if field is None:
        raise ConfigError("export.onnx takes no precision field slmops knows", fix=f"its fields are {', '.join(st.config.model_fields)}")
    return {field: int(qtype[3:]) if field == "bits" else qtype}


def build_candidate(target: str, model: Artifact, store: Any) -> Artifact:
    """Run the export stage for ``target`` (cached); raises :class:`SlmopsError` when it cannot."""
    from slmops.stage.runner import run_stage

    fmt, q = parse_target(target)
    if fmt == "gguf":
        return run_stage("export.gguf", {"model": model}, {"qtype": q}, store=store).artifact
    return run_stage("export.onnx", {"model": model}, _onnx_config(q), store=store).artifact


def _bench(art: Artifact, cfg: OptimizeConfig) -> dict[str, Any]:
    from slmops.export.measure import measure_in_subprocess, measure_runtime

    kw = {"prompt_tokens": cfg.bench_prompt_tokens, "new_tokens": cfg.bench_new_tokens, "runs": cfg.bench_runs}
    return measure_in_subprocess(art.path, **kw) if cfg.isolate else measure_runtime(art.path, **kw)


def optimize(model: Artifact, data: Artifact, cfg: OptimizeConfig, store: Any) -> dict[str, Any]:
    """Build, check and measure every target; return ``{"rows": [...], "chosen": target | None}``."""
    from slmops.stage.runner import run_stage

    limits = limit_gates(cfg, OPTIMIZE_LIMITS)
    parity_cfg = {**{k: getattr(cfg, k) for k in PARITY_LIMITS}, "max_texts": cfg.parity_texts, "max_tokens": cfg.parity_tokens, "greedy_prompts": cfg.greedy_prompts}
    ref_size = model.manifest.size_bytes
    rows: list[dict[str, Any]] = []
    for target in cfg.targets:
        row: dict[str, Any] = {"target": target, "status": "ok", "passed": False, "chosen": False}
        try:
            art = build_candidate(target, model, store)
            row.update(digest=art.digest, size_bytes=art.manifest.size_bytes, size_vs_model=art.manifest.size_bytes / ref_size if ref_size else None)
            par = run_stage("parity", {"candidate": art, "reference": model, "data": data}, parity_cfg, store=store).artifact
            m = par.manifest.metrics
            row.update(parity_report=par.digest, kl_mean=m.get("kl_mean"), top1_agreement=m.get("top1_agreement"),
                       ppl_increase=m.get("ppl_increase"), greedy_match=m.get("greedy_match"), gates_passed=bool(m.get("passed")))
            row.update({k: v for k, v in _bench(art, cfg).items() if k in ("decode_tokens_per_s", "ttft_s", "peak_rss_bytes", "load_s")})
        except SlmopsError as exc:
            skipped = target.startswith("onnx:") and "export.onnx" in exc.message
            row.update(status="skipped" if skipped else "error", message=exc.message)
            log.warning("optimize: %s %s: %s", target, row["status"], exc.message)
            rows.append(row)
            continue
        fails = [] if row["gates_passed"] else ["parity gates"]
        fails += [r.detail for r in check_gates(limits, {g.metric: row.get(g.metric) for g in limits}) if not r.passed]
        row.update(passed=not fails, failed=fails)
        rows.append(row)
    passing = [r for r in rows if r["passed"]]
    chosen = None
    if passing:
        best = min(passing, key=lambda r: r["size_bytes"]) if cfg.objective == "smallest" else max(passing, key=lambda r: r.get("decode_tokens_per_s") or 0)
        best["chosen"] = True
        chosen = best["target"]
    return {"rows": rows, "chosen": chosen, "chosen_digest": next((r["digest"] for r in rows if r["chosen"]), None),
            "objective": cfg.objective, "model": model.digest, "model_size_bytes": ref_size}


def report_markdown(result: dict[str, Any]) -> str:
    """The optimizer's table: one row per target, the chosen one marked."""
    head = "| target | status | size | × model | KL | top-1 | ppl Δ | greedy | tok/s | TTFT ms | peak RSS | pass |"
    lines = [f"# Optimize ({result['objective']})", "", head, "|" + " --- |" * 12]
    for r in result["rows"]:
        def f(key: str, fmt: str = "{:.4g}", scale: float = 1.0, r: dict[str, Any] = r) -> str:
            v = r.get(key)
            return "-" if v is None else fmt.format(v * scale)
        mark = "**chosen**" if r["chosen"] else ("yes" if r["passed"] else "no")
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('message', '')}"
        lines.append(f"| {r['target']} | {status} | {f('size_bytes', '{:.3g}', 1e-6)} MB | {f('size_vs_model', '{:.2f}')} | {f('kl_mean')} | "
                     f"{f('top1_agreement', '{:.3f}')} | {f('ppl_increase', '{:+.2%}')} | {f('greedy_match', '{:.2f}')} | {f('decode_tokens_per_s', '{:.1f}')} | "
                     f"{f('ttft_s', '{:.1f}', 1e3)} | {f('peak_rss_bytes', '{:.0f}', 1e-6)} MB | {mark} |")
    lines += ["", f"chosen: {result['chosen'] or 'none passed every gate'}"]
    return "\n".join(lines) + "\n"
