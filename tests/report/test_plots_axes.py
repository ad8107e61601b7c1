"""The accuracy-vs-size plot reads in plain numbers: two models of nearly one size get no "+5.1652e2" axis offset."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.mark.parametrize("sizes", [(516.52, 516.53), (516.5, 98.4)], ids=["same-size", "apart"])
def test_quality_vs_size_has_no_axis_offset(sizes: tuple[float, float]) -> None:
    from slmops.report.plots import _png, quality_vs_size_figure

    rows: list[dict[str, Any]] = [{"label": f"m{i}", "size_bytes": int(s * 2**20), "metrics": {"accuracy": a}}
                                  for i, (s, a) in enumerate(zip(sizes, (0.75, 0.7501), strict=True))]
    fig = quality_vs_size_figure(rows, "accuracy")
    fig.canvas.draw()
    ax = fig.axes[0]
    assert ax.xaxis.get_major_formatter().get_offset() == "" and ax.yaxis.get_major_formatter().get_offset() == ""
    lo, hi = ax.get_xlim()
    assert lo <= min(sizes) and hi >= max(sizes) and hi - lo >= 1.0, "a readable range around the points"
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert labels and all("e" not in t for t in labels), labels
    assert _png(fig).startswith(b"\x89PNG")
