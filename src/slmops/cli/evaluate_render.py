"""Human output of ``slmops eval``, ``bench``, ``compare`` and ``validate`` (rich tables on stdout)."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from slmops.cli.render import esc, fitted_tables, human_bytes, out


def _n(v: Any, fmt: str = "{:.4g}") -> str:
    return "–" if v is None else fmt.format(v) if isinstance(v, int | float) else str(v)


def _ms(v: Any) -> str:
    return "–" if v is None else f"{v * 1000:.1f}"


def show_eval(d: dict[str, Any]) -> None:
    rep = d["report"]
    t = rep["target"]
    who = f"{t.get('model')} @ {t.get('url')}" if t.get("kind") == "http" else f"{d.get('target') or t.get('label')} ({t.get('runtime')})"
    c = rep["counts"]
    state = "[dim]cached[/]" if d["cached"] else "[green]created[/]"
    out.print(f"{state} report [bold]{esc(d['name'] or 'sha256:' + d['digest'][:12])}[/] — {esc(who)} on {c['examples']} examples "
              f"({esc(rep['data']['split'])}), {c['errors']} errors" + (f", {c['resumed']} resumed" if c.get("resumed") else ""), markup=True)
    ref = rep.get("ref")
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    if ref:
        table.add_column("ref", justify="right")
        table.add_column("retention", justify="right")
    for k, v in rep["metrics"].items():
        row = [k, _n(v)]
        if ref:
            ret = rep.get("retention_pct", {}).get(k)
            row += [_n((ref.get("metrics") or {}).get(k)), _n(ret, "{:.1f}%")]
        table.add_row(*row)
    out.print(table)
    if d["gates"]:
        gates = Table(title="quality gates")
        for col in ("gate", "value", "threshold", "result"):
            gates.add_column(col, justify="left" if col == "gate" else "right")
        for g in d["gates"]:
            gates.add_row(g["gate"], _n(g["value"]), _n(g["threshold"]), Text("pass", "green") if g["passed"] else Text("FAIL", "red"))
        out.print(gates)


def show_bench(d: dict[str, Any]) -> None:
    rep = d["report"]
    state = "[dim]cached[/]" if d["cached"] else "[green]measured[/]"
    out.print(f"{state} bench report sha256:{d['digest'][:12]}", markup=True)
    if rep.get("levels"):
        t = rep["target"]
        table = Table(title=f"{t['model']} @ {t['url']}")
        for col in ("prompt", "out", "conc", "req/s", "tok/s", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "ITL p95 ms", "e2e p95 s",
                    "goodput req/s", "failed"):
            table.add_column(col, justify="right")
        for lv in rep["levels"]:
            table.add_row(str(lv["prompt_words"]), str(lv["output_tokens"]), str(lv["concurrency"]), _n(lv["requests_per_s"], "{:.2f}"),
                          _n(lv["output_tokens_per_s"], "{:.1f}"), _ms(lv["ttft_s"]["p50"]), _ms(lv["ttft_s"]["p99"]), _ms(lv["tpot_s"]["p50"]),
                          _ms(lv["itl_s"]["p95"]), _n(lv["e2e_s"]["p95"], "{:.3f}"), _n(lv.get("goodput_requests_per_s"), "{:.2f}"),
                          str(lv["failed"]))
        out.print(table)
        return
    m = rep["memory"]
    warm = f" (+{rep['engine_import_s']:.1f} s importing the engine)" if rep.get("engine_import_s") else ""
    out.print(f"load {rep['load_s']:.2f} s{warm} · size {human_bytes(rep['size_bytes'])} · peak RSS {human_bytes(m['peak_rss_bytes'])}"
              f" ({'own process' if m.get('isolated') else 'this process'}) · runtime {rep.get('runtime')}")
    table = Table()
    for col in ("prompt", "out", "TTFT p50 ms", "TTFT p95 ms", "TPOT p50 ms", "TPOT p99 ms", "ITL p99 ms", "e2e p50 s", "e2e p99 s", "tok/s"):
        table.add_column(col, justify="right")
    for c in rep["cells"]:
        if c.get("skipped"):
            table.add_row(str(c["prompt_tokens"]), str(c["output_tokens"]), Text(str(c["skipped"]), "dim"), *[""] * 7)
            continue
        table.add_row(str(c["prompt_tokens"]), str(c["output_tokens"]), _ms(c["ttft_s"]["p50"]), _ms(c["ttft_s"]["p95"]),
                      _ms(c["tpot_s"]["p50"]), _ms(c["tpot_s"]["p99"]), _ms(c["itl_s"]["p99"]), _n(c["e2e_s"]["p50"], "{:.3f}"),
                      _n(c["e2e_s"]["p99"], "{:.3f}"), _n(c["output_tokens_per_s"], "{:.1f}"))
    out.print(table)


def show_compare(d: dict[str, Any]) -> None:
    from slmops.report.html import table as compare_table

    head, body = compare_table(d["report"])
    for table in fitted_tables(head, body, title=d["report"].get("title"), console=out):
        out.print(table)
    for w in d["report"].get("warnings") or []:
        out.print(Text.assemble(("warning:", "yellow"), f" {w}"))
    out.print(f"report sha256:{d['digest'][:12]} ({d['path']}); open report.html there, or pass --html FILE", style="dim")


def show_validate(d: dict[str, Any]) -> None:
    rep = d["report"]
    verdict = "[bold green]PASSED[/]" if rep["passed"] else "[bold red]FAILED[/]"
    out.print(f"deployment validation {verdict} (report sha256:{d['digest'][:12]})", markup=True)
    table = Table()
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    colors = {"pass": "green", "fail": "red", "skip": "yellow"}
    for c in rep["checks"]:
        table.add_row(c["name"], Text(c["status"], colors[c["status"]]), c["detail"])
    out.print(table)
