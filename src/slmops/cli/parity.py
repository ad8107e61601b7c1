"""``slmops parity``: how closely an export follows its parent (KL, top-1, perplexity, greedy, task score), with gates."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from slmops.cli.common import JsonOpt, ReportNameOpt, open_cli_store
from slmops.cli.flags import config_command
from slmops.cli.models import result_dict
from slmops.cli.render import emit, out, progress_bars
from slmops.export.parity import ParityConfig
from slmops.pipeline.inputs import resolve_input
from slmops.stage.runner import run_stage

Opt = typer.Option
RUNTIME_OPTIONS_WHY = "runtime open options (e.g. n_ctx) are set in a recipe step's config, not on the command line"


def gate_failure(gates: list[dict[str, Any]], what: str) -> None:
    """Raise the quality-gate error (exit code 3) when a gate failed."""
    from slmops.evaluate.gates import GateResult, enforce

    enforce([GateResult.from_dict(g) for g in gates], where=what, fix="use a less aggressive quantization, or relax the gate")


def register(parent: typer.Typer) -> None:
    @config_command(parent, "parity", config=ParityConfig, stage="parity",
                    hidden={"candidate_options": RUNTIME_OPTIONS_WHY, "reference_options": RUNTIME_OPTIONS_WHY})
    def parity(
        candidate: Annotated[str, typer.Argument(help="The export to check (a gguf or onnx artifact, or any model).")],
        data: Annotated[str, Opt("--data", "-d", help="Dataset (ref or file) to measure on.")],
        ref: Annotated[str | None, Opt("--ref", help="The reference (default: the fp32 model CANDIDATE was exported from, "
                                                     "with the export's adapter applied).")] = None,
        name: ReportNameOpt = None,
        as_json: JsonOpt = False,
        *,
        cfg: dict[str, Any],
    ) -> None:
        """Compare an export with its parent on a dataset; exit 3 when a gate fails."""
        from slmops.export.stages_eval import parity_reference

        with open_cli_store() as store, progress_bars(not as_json):
            cand = resolve_input(candidate, store)
            reference = resolve_input(ref, store) if ref else parity_reference(cand, store)
            dataset = resolve_input(data, store, kind="dataset")
            r = run_stage("parity", {"candidate": cand, "reference": reference, "data": dataset}, cfg, store=store, output_name=name)
        d = result_dict(r, name)
        emit(d, as_json, _print)
        gate_failure(d["meta"].get("gates", []), f"sha256:{cand.short}")


def _print(d: dict[str, Any]) -> None:
    m = d["metrics"]
    t = Table(title=f"parity report sha256:{d['digest'][:12]}" + (" (cached)" if d["cached"] else ""))
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in m.items():
        t.add_row(k, "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v))
    out.print(t)
    for g in d["meta"].get("gates", []):
        mark = ("skip", "dim") if g.get("skipped") else ("pass", "green") if g["passed"] else ("FAIL", "red")
        value = "-" if g["value"] is None else f"{g['value']:.4g}"
        out.print(Text.assemble(mark, f" {g['metric']} = {value} (limit {g['op']} {g['threshold']:.4g})"))
