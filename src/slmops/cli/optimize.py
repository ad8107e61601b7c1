"""``slmops optimize``: build several exports, check and measure each, and choose the smallest (or fastest) that passes."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from slmops.cli.common import JsonOpt, open_cli_store
from slmops.cli.models import result_dict
from slmops.cli.render import emit, human_bytes, out, progress_bars
from slmops.stage.inputs import resolve_input
from slmops.stage.runner import run_stage

Opt = typer.Option


def register(parent: typer.Typer) -> None:
    @parent.command("optimize")
    def optimize(
        model: Annotated[str, typer.Argument(help="The model to export (name, ref, ./hf-folder).")],
        data: Annotated[str, Opt("--data", "-d", help="Dataset (ref or file) for the parity checks.")],
        targets: Annotated[str, Opt("--targets", "-t", help="Comma-separated FORMAT:TYPE, e.g. onnx:int4,onnx:int8,gguf:q4_k_m,gguf:q8_0.")] = "gguf:q8_0,gguf:q4_k_m",
        max_kl: Annotated[float | None, Opt("--max-kl", help="Gate: mean KL divergence from the model (nats). Default 0.25.")] = None,
        min_top1: Annotated[float | None, Opt("--min-top1", help="Gate: top-1 agreement (0-1).")] = None,
        max_ppl_increase: Annotated[float | None, Opt("--max-ppl-increase", help="Gate: relative perplexity increase (0.05 = 5%).")] = None,
        min_greedy_match: Annotated[float | None, Opt("--min-greedy-match", help="Gate: share of identical greedy outputs.")] = None,
        max_size: Annotated[str | None, Opt("--max-size", help="Gate: largest size on disk, e.g. 500MB or 1.5GiB.")] = None,
        min_tokens_per_s: Annotated[float | None, Opt("--min-tokens-per-s", help="Gate: slowest acceptable decode speed.")] = None,
        objective: Annotated[str, Opt("--objective", help="smallest or fastest passing candidate.")] = "smallest",
        parity_texts: Annotated[int | None, Opt("--parity-texts", help="Records scored per parity check.")] = None,
        no_isolate: Annotated[bool, Opt("--no-isolate", help="Measure in this process (faster; peak RSS is then not per candidate).")] = False,
        name: Annotated[str | None, Opt("--name", "-n", help="Registry name for the report.")] = None,
        profile: Annotated[str | None, Opt("--profile", help="Device profile (slmops profile ls): its size/speed limits become gates, its formats filter the targets.")] = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Export MODEL to every target, measure size, speed, peak RSS and parity, and mark the best that passes."""
        values = {"max_kl": max_kl, "min_top1": min_top1, "max_ppl_increase": max_ppl_increase, "min_greedy_match": min_greedy_match,
                  "max_size_bytes": max_size, "min_tokens_per_s": min_tokens_per_s, "parity_texts": parity_texts}
        cfg: dict[str, Any] = {k: v for k, v in values.items() if v is not None}
        from slmops.export.optimize import parse_target

        cfg.update(targets=[t for t in targets.split(",") if t.strip()], objective=objective)
        for t in cfg["targets"]:
            parse_target(t)  # a typo fails before any work
        if no_isolate:
            cfg["isolate"] = False
        with open_cli_store() as store, progress_bars(not as_json):
            if profile:
                from slmops.deploy.profiles import apply_profile, load_profile

                cfg = apply_profile(cfg, load_profile(store, profile))
            inputs = {"model": resolve_input(model, store, kind="model"), "data": resolve_input(data, store, kind="dataset")}
            r = run_stage("optimize", inputs, cfg, store=store, output_name=name)
        d = result_dict(r, name)
        emit(d, as_json, _print)
        if not d["metrics"].get("chosen"):
            from slmops.evaluate.gates import GateFailed

            raise GateFailed("no candidate passed every gate", why=f"{d['metrics'].get('candidates')} candidate(s) tried",
                             fix="see the table; relax --max-kl/--max-size or add less aggressive targets")


def _print(d: dict[str, Any]) -> None:
    t = Table(title=f"optimize report sha256:{d['digest'][:12]}" + (" (cached)" if d["cached"] else ""))
    for col in ("target", "status", "size", "KL", "top-1", "tok/s", "TTFT ms", "peak RSS", "result"):
        t.add_column(col)

    def num(v: Any, fmt: str) -> str:
        return "-" if v is None else fmt.format(v)

    for r in d["meta"].get("rows", []):
        result = Text("chosen", "bold green") if r["chosen"] else Text("pass") if r["passed"] else Text("fail", "red")
        t.add_row(r["target"], r["status"], human_bytes(r.get("size_bytes")), num(r.get("kl_mean"), "{:.3g}"), num(r.get("top1_agreement"), "{:.3f}"),
                  num(r.get("decode_tokens_per_s"), "{:.1f}"), num(None if r.get("ttft_s") is None else r["ttft_s"] * 1e3, "{:.1f}"),
                  human_bytes(r.get("peak_rss_bytes")), result)
    out.print(t)
    for r in d["meta"].get("rows", []):
        if r["status"] != "ok" or r.get("failed"):
            out.print(f"  {r['target']}: {r.get('message') or '; '.join(r.get('failed') or [])}")
    out.print(f"chosen: {d['metrics'].get('chosen') or 'none'}")
