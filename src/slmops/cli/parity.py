"""``slmops parity``: how closely an export follows its parent (KL, top-1, perplexity, greedy, task score), with gates."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from slmops.cli.common import JsonOpt, open_cli_store
from slmops.cli.models import result_dict
from slmops.cli.render import emit, out, progress_bars
from slmops.pipeline.inputs import resolve_input
from slmops.stage.runner import run_stage

Opt = typer.Option


def gate_failure(gates: list[dict[str, Any]], what: str) -> None:
    """Raise the quality-gate error (exit code 3) when a gate failed."""
    from slmops.evaluate.gates import GateResult, enforce

    enforce([GateResult.from_dict(g) for g in gates], where=what, fix="use a less aggressive quantization, or relax the gate")


def register(parent: typer.Typer) -> None:
    @parent.command("parity")
    def parity(
        candidate: Annotated[str, typer.Argument(help="The export to check (a gguf or onnx artifact, or any model).")],
        data: Annotated[str, Opt("--data", "-d", help="Dataset (ref or file) to measure on.")],
        ref: Annotated[str | None, Opt("--ref", help="The reference (default: the fp32 model CANDIDATE was exported from, "
                                                     "with the export's adapter applied).")] = None,
        max_kl: Annotated[float | None, Opt("--max-kl", help="Gate: mean KL divergence (nats). Default 0.25.")] = None,
        min_top1: Annotated[float | None, Opt("--min-top1", help="Gate: top-1 agreement (0-1). Default 0.7.")] = None,
        max_ppl_increase: Annotated[float | None, Opt("--max-ppl-increase", help="Gate: relative perplexity increase (0.05 = 5%).")] = None,
        min_greedy_match: Annotated[float | None, Opt("--min-greedy-match", help="Gate: share of identical greedy outputs (0-1). Default 0.5.")] = None,
        max_task_drop: Annotated[float | None, Opt("--max-task-drop", help="Gate: largest drop of the task score (token F1). Default 0.05.")] = None,
        max_texts: Annotated[int | None, Opt("--max-texts", help="Records scored.")] = None,
        max_tokens: Annotated[int | None, Opt("--max-tokens", help="Tokens scored per record.")] = None,
        greedy_prompts: Annotated[int | None, Opt("--greedy-prompts", help="Prompts generated greedily on both sides.")] = None,
        split: Annotated[str | None, Opt("--split", help="Dataset split (default: unsplit data, else test/validation/train).")] = None,
        name: Annotated[str | None, Opt("--name", "-n", help="Registry name for the report.")] = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Compare an export with its parent on a dataset; exit 3 when a gate fails."""
        values = {"max_kl": max_kl, "min_top1": min_top1, "max_ppl_increase": max_ppl_increase, "min_greedy_match": min_greedy_match,
                  "max_task_drop": max_task_drop, "max_texts": max_texts, "max_tokens": max_tokens, "greedy_prompts": greedy_prompts, "split": split}
        cfg = {k: v for k, v in values.items() if v is not None}
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
