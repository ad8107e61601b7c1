"""``slmops doctor``: what this machine and installation can do."""

from __future__ import annotations

import typer
from rich.table import Table
from rich.text import Text

from slmops.cli.common import JsonOpt
from slmops.cli.render import emit, human_bytes, out


def register(app: typer.Typer) -> None:
    @app.command()
    def doctor(as_json: JsonOpt = False) -> None:
        """Report Python, cores, RAM, CPU features (AVX2/AVX-512/VNNI), installed extras, SLMOPS_HOME and free disk."""
        from slmops.sysinfo import machine_report

        emit(machine_report(), as_json, _human)


def _human(r: dict) -> None:
    t = Table(title=f"slmops {r['slmops']}", show_header=False)
    t.add_row("python", f"{r['python']} ({r['executable']})")
    t.add_row("platform", r["platform"])
    t.add_row("cpu", f"{r['cpu']['model']} — {r['cores']} cores")
    t.add_row("cpu features", ", ".join(r["cpu"]["features"]) or "none detected")
    t.add_row("memory", f"{human_bytes(r['memory']['total'])} total, {human_bytes(r['memory']['available'])} available")
    t.add_row("accelerators", ", ".join(r["accelerators"]) or "none (CPU only)")
    t.add_row("SLMOPS_HOME", r["home"] + ("" if r["home_exists"] else " (not created yet)"))
    t.add_row("free disk", human_bytes(r["disk_free_bytes"]))
    for extra, dists in r["extras"].items():
        mark = ("ok", "green") if r["extras_complete"][extra] else ("partial", "yellow")
        parts = [(", " if i else "") + f"{d} " for i, d in enumerate(dists)]
        t.add_row(f"extra [{extra}]", Text.assemble(mark, " ", *[p for part, v in zip(parts, dists.values(), strict=True) for p in (part, v or ("missing", "red"))]))
    out.print(t)
