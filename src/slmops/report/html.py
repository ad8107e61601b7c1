"""Rendering a comparison report: a self-contained HTML page (plots embedded as PNG data URIs) and Markdown.

The HTML needs no network and no JavaScript: one table (parameters, size, peak RSS, load time,
TTFT, TPOT, tokens/s, every quality metric, retention vs the reference), then the plots. Text
from reports is escaped (Jinja2 autoescape), since labels and model names come from users.
"""

from __future__ import annotations

import base64
from typing import Any

import jinja2

from slmops.units import format_bytes


def _num(v: Any, fmt: str = "{:.3g}") -> str:
    return "–" if v is None else fmt.format(v)


def _bytes(v: Any) -> str:
    return format_bytes(v, missing="–")


def _params(v: Any) -> str:
    if v is None:
        return "–"
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if v >= div:
            return f"{v / div:.1f}{suffix}"
    return str(v)


def _ms(v: Any) -> str:
    return "–" if v is None else f"{v * 1000:.1f} ms"


def _pct(v: Any) -> str:
    return "–" if v is None else f"{v:+.1f}%"


def table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells of the comparison table (shared by HTML and Markdown)."""
    metrics = report["metrics"]
    head = ["model", "params", "precision", "size", "peak RSS", "load", "TTFT p50", "TPOT p50", "tokens/s", *metrics]
    ref = report.get("ref")
    if ref:
        head += ["latency reduction", "memory reduction", *[f"{m} retention" for m in metrics]]
    body = []
    for r in report["rows"]:
        cells = [r["label"] + (" (ref)" if r["label"] == ref else ""), _params(r.get("parameters")), r.get("precision") or "–",
                 _bytes(r.get("size_bytes")), _bytes(r.get("peak_rss_bytes")), _num(r.get("load_s"), "{:.2f} s"),
                 _ms(r.get("ttft_s")), _ms(r.get("tpot_s")), _num(r.get("tokens_per_s"), "{:.1f}"),
                 *[_num(r["metrics"].get(m), "{:.4g}") for m in metrics]]
        if ref:
            vs = r.get("vs_ref") or {}
            ret = vs.get("retention_pct") or {}
            cells += [_pct(vs.get("latency_reduction_pct")), _pct(vs.get("memory_reduction_pct")),
                      *[_num(ret.get(m), "{:.1f}%") for m in metrics]]
        body.append(cells)
    return head, body


_TITLES = {
    "quality_vs_size": "Quality vs size",
    "tokens_per_s_by_precision": "Throughput by precision",
    "latency_distribution": "Latency distribution",
}

_PAGE = jinja2.Environment(autoescape=True).from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:1.5em;margin:0 0 4px} .sub{color:#666;margin:0 0 18px;font-size:.9em}
table{border-collapse:collapse;font-size:.86em;margin-bottom:24px} th,td{border:1px solid #ddd;padding:5px 9px;text-align:right}
th{background:#f4f6f8} td:first-child,th:first-child{text-align:left;font-weight:600}
tr.ref td{background:#fffbe6} .plots{display:flex;flex-wrap:wrap;gap:18px}
figure{margin:0;border:1px solid #e4e4e4;padding:8px;border-radius:6px}
img{max-width:100%;height:auto;display:block} ul.warn{color:#8a5a00;font-size:.9em}
</style></head><body>
<h1>{{ title }}</h1>
<p class="sub">{{ labels|length }} models{% if data %} · data sha256:{{ data.digest[:12] }} ({{ data.split }}){% endif %}
{% if ref %} · reference: {{ ref }}{% endif %}{% if machine %} · {{ machine }}{% endif %}</p>
<table><thead><tr>{% for h in head %}<th>{{ h }}</th>{% endfor %}</tr></thead><tbody>
{% for row in body %}<tr{% if labels[loop.index0] == ref %} class="ref"{% endif %}>{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>
{% if warnings %}<ul class="warn">{% for w in warnings %}<li>{{ w }}</li>{% endfor %}</ul>{% endif %}
<div class="plots">{% for p in plots %}<figure><img alt="{{ p.title }}" src="data:image/png;base64,{{ p.data }}"></figure>
{% endfor %}</div>
</body></html>
""")


def render_html(report: dict[str, Any], plots: dict[str, bytes]) -> str:
    head, body = table(report)
    figs = [{"title": _TITLES.get(k, k), "data": base64.b64encode(v).decode()} for k, v in plots.items()]
    return _PAGE.render(title=report.get("title") or "Model comparison", head=head, body=body, plots=figs, ref=report.get("ref"),
                        labels=[r["label"] for r in report["rows"]], data=report.get("data"), machine=report.get("machine"),
                        warnings=report.get("warnings") or [])


def render_markdown(report: dict[str, Any]) -> str:
    head, body = table(report)
    esc = lambda s: str(s).replace("|", "\\|")
    lines = [f"# {report.get('title') or 'Model comparison'}", "", "| " + " | ".join(map(esc, head)) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in body]
    lines.append("")
    if report.get("warnings"):
        lines += [f"> **warning:** {w}" for w in report["warnings"]] + [""]
    for stem in report.get("plots", []):
        lines += [f"![{_TITLES.get(stem, stem)}](plots/{stem}.png)", ""]
    return "\n".join(lines)
