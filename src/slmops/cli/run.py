"""``slmops run RECIPE.yaml`` (the whole lifecycle from one file) and ``slmops stages`` (what a step can be)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from slmops.cli.common import JsonOpt, open_cli_store
from slmops.cli.flags import parse_pairs, yaml_value
from slmops.cli.render import emit, err, fits, out, progress_bars


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_(
        recipe: Annotated[str, typer.Argument(help="Recipe YAML file (see docs/recipes.md and examples/).")],
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the steps in order and which are cached; run nothing.")] = False,
        force: Annotated[list[str] | None, typer.Option("--force", help="Re-run this step even if cached (repeatable).")] = None,
        until: Annotated[str | None, typer.Option("--until", help="Run only this step and what it needs.")] = None,
        set_: Annotated[list[str] | None, typer.Option("--set", help="Override a recipe var: NAME=VALUE (repeatable).")] = None,
        executor: Annotated[str, typer.Option("--executor", help="local (one step at a time, here) or ray (steps as Ray tasks; "
                                              "needs slmops[scale], see docs/scale.md).")] = "local",
        address: Annotated[str | None, typer.Option("--address", help="Ray cluster for --executor ray (default RAY_ADDRESS, "
                                                    "else a new local cluster).")] = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Run every step of a recipe through the cached runner; re-runs are free, crashes resume, failed gates exit 3."""
        from slmops.pipeline.execute import run_recipe
        from slmops.pipeline.recipe import load_recipe

        rec = load_recipe(recipe, overrides=parse_pairs(set_, "--set", "n=200", yaml_value, form="NAME=VALUE"))
        with open_cli_store() as store, progress_bars(not as_json):
            results = run_recipe(rec, store=store, dry_run=dry_run, force=set(force or []), until=until,
                                 on_step=None if as_json else lambda r: err.print(_line(r), highlight=False),
                                 executor=executor, address=address)
        data = {"recipe": rec.name, "dry_run": dry_run, "steps": [r.to_dict() for r in results]}
        report = next((r for r in reversed(results) if r.artifact is not None and r.artifact.kind == "report"), None)
        if report is not None:
            html = sorted(report.artifact.path.glob("*.html"))
            data["report"] = str(html[0]) if html else str(report.artifact.path)
        emit(data, as_json, _summary)

    @app.command("stages")
    def stages(as_json: JsonOpt = False) -> None:
        """List every registered stage with its inputs, output kind and config fields."""
        from slmops.stage import all_stages

        rows = []
        for name, st in all_stages().items():
            fields = {f: (info.description or "") for f, info in st.config.model_fields.items()}
            rows.append({"stage": name, "version": st.version, "kind": st.kind, "format": st.format,
                         "inputs": list(st.inputs), "optional_inputs": list(st.optional_inputs),
                         "description": st.description, "config": fields})
        emit(rows, as_json, _print_stages)


def _line(r: Any) -> Text:
    colour = {"ran": "green", "cached": "dim", "done": "green", "planned": "yellow"}.get(r.status, "white")
    what = r.name or (f"sha256:{r.artifact.short}" if r.artifact else "")
    return Text.assemble((f"{r.status:>7}", colour), f" {r.step} ({r.kind}) {what} {r.detail or ''} ", (f"{r.seconds:.1f}s", "dim"))


def _summary(data: dict[str, Any]) -> None:
    """The final table; on a narrow terminal (80 columns) the metrics move under it, one line per step, so no cell is cut."""
    title = f"recipe {data['recipe']}" + (" (dry run)" if data["dry_run"] else "")
    rows = []
    for s in data["steps"]:
        metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(s["metrics"].items())[:4]
                            if not isinstance(v, dict | list))
        output = s["name"] or (f"sha256:{s['digest'][:12]}" if s["digest"] else (s["detail"] or ""))
        rows.append((s["step"], s["kind"], s["status"], output, f"{s['seconds']:.1f}", metrics))
    t = Table(title=title)
    for col in ("step", "stage/action", "status", "output", "seconds", "metrics"):
        t.add_column(col)
    for row in rows:
        t.add_row(*row)
    if fits(t):
        out.print(t)
    else:
        t = Table(title=title)
        for col in ("step", "stage/action", "status", "output", "s"):
            t.add_column(col, overflow="fold", justify="right" if col == "s" else "left")
        for row in rows:
            t.add_row(*row[:5])
        out.print(t)
        for row in rows:
            if row[5]:
                out.print(Text.assemble("  ", (row[0], "bold"), f": {row[5]}"), soft_wrap=False)
    if data.get("report"):
        out.print(f"report: {data['report']}")


def _print_stages(rows: list[dict[str, Any]]) -> None:
    t = Table()
    for col in ("stage", "inputs", "output", "description"):
        t.add_column(col)
    for r in rows:

        optional = r["optional_inputs"] if len(r["optional_inputs"]) <= 4 else [*r["optional_inputs"][:2], "…"]
        ins = escape(", ".join(r["inputs"] + [f"[{x}]" for x in optional]) or "-")
        t.add_row(r["stage"], ins, f"{r['kind']} ({r['format']})", r["description"])
    out.print(t)
