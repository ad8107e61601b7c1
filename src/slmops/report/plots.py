"""The comparison plots, as PNG bytes (matplotlib, Agg backend, nothing shown on screen).

* quality vs size — one point per model (x: size on disk, y: the main quality metric), labelled;
  the frontier people choose from.
* tokens/s by precision — one bar per model, coloured by its precision (fp32, bf16, int4, Q4_K_M…).
* latency distribution — box plots of time to first token and end-to-end latency per model, from
  every timed run of the benchmark.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from slmops._optional import require

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def _plt() -> Any:
    mpl = require("matplotlib", extra="eval", purpose="report plots")
    mpl.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def quality_vs_size(rows: Sequence[dict[str, Any]], metric: str) -> bytes | None:
    fig = quality_vs_size_figure(rows, metric)
    return None if fig is None else _png(fig)


def quality_vs_size_figure(rows: Sequence[dict[str, Any]], metric: str) -> Any:
    """The quality-vs-size figure (None without data); sizes read whole on the axis (no "+5.1652e2" offset)."""
    pts = [(r["size_bytes"] / 2**20, r["metrics"].get(metric), r["label"]) for r in rows
           if r.get("size_bytes") and r["metrics"].get(metric) is not None]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (x, y, label) in enumerate(pts):
        ax.scatter([x], [y], s=90, color=PALETTE[i % len(PALETTE)], zorder=3, label=label)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
    sizes = [p[0] for p in pts]
    if min(sizes) > 0 and max(sizes) / min(sizes) > 20:
        ax.set_xscale("log")
    else:  # models of (nearly) one size: pad the range so the ticks are whole sizes, and never print an offset
        lo, hi = min(sizes), max(sizes)
        pad = max((hi - lo) * 0.15, hi * 0.05, 0.5)
        ax.set_xlim(max(0.0, lo - pad), hi + pad)
        ax.ticklabel_format(axis="x", style="plain", useOffset=False)
    ax.ticklabel_format(axis="y", style="plain", useOffset=False)
    ax.set_xlabel("size on disk (MiB)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs size")
    ax.grid(True, alpha=0.3)
    return fig


def tokens_per_s_by_precision(rows: Sequence[dict[str, Any]]) -> bytes | None:
    bars = [(r["label"], r.get("precision") or "unknown", r.get("tokens_per_s")) for r in rows if r.get("tokens_per_s")]
    if not bars:
        return None
    plt = _plt()
    precisions = list(dict.fromkeys(b[1] for b in bars))
    colors = {p: PALETTE[i % len(PALETTE)] for i, p in enumerate(precisions)}
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    from matplotlib.patches import Patch

    ax.bar([b[0] for b in bars], [b[2] for b in bars], color=[colors[b[1]] for b in bars], zorder=3)
    ax.legend(handles=[Patch(color=colors[p], label=p) for p in precisions], title="precision")
    if min(b[2] for b in bars) > 0 and max(b[2] for b in bars) / min(b[2] for b in bars) > 50:
        ax.set_yscale("log")
    ax.set_ylabel("output tokens/s")
    ax.set_title("throughput by precision")
    ax.grid(True, axis="y", alpha=0.3)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    return _png(fig)


def latency_distribution(rows: Sequence[dict[str, Any]]) -> bytes | None:
    data = [(r["label"], r.get("ttft_samples") or [], r.get("e2e_samples") or []) for r in rows]
    data = [d for d in data if d[1] or d[2]]
    if not data:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 4.2))
    for ax, idx, title in ((axes[0], 1, "time to first token (ms)"), (axes[1], 2, "end-to-end latency (ms)")):
        series = [[v * 1000 for v in d[idx]] or [0.0] for d in data]
        box = ax.boxplot(series, patch_artist=True, showfliers=True)
        ax.set_xticks(range(1, len(data) + 1), [d[0] for d in data], rotation=20, ha="right")
        for i, patch in enumerate(box["boxes"]):
            patch.set_facecolor(PALETTE[i % len(PALETTE)])
            patch.set_alpha(0.75)
        ax.set_title(title)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("latency distribution")
    return _png(fig)


def all_plots(rows: Sequence[dict[str, Any]], metric: str | None) -> dict[str, bytes]:
    """Every plot that has data, by file stem."""
    made = {
        "quality_vs_size": quality_vs_size(rows, metric) if metric else None,
        "tokens_per_s_by_precision": tokens_per_s_by_precision(rows),
        "latency_distribution": latency_distribution(rows),
    }
    return {k: v for k, v in made.items() if v}
