"""``slmops optimize``: build several exports, check and measure each, and choose the smallest (or fastest) that passes."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from slmops.cli.common import JsonOpt, ReportNameOpt, open_cli_store
from slmops.cli.flags import Flag, config_command, default_of, split_csv
from slmops.cli.models import result_dict
from slmops.cli.render import emit, human_bytes, out, progress_bars
from slmops.export.optimize import OptimizeConfig
from slmops.pipeline.inputs import resolve_input
from slmops.stage.runner import run_stage

Opt = typer.Option


def _targets(text: str, flag: str) -> list[str]:
    from slmops.export.optimize import parse_target

    targets = split_csv(text)
    for t in targets:
        parse_target(t)  # a typo fails before any work
    return targets


_FLAGS = {
    "targets": Flag("--targets", "-t", parse=_targets, note="comma-separated, e.g. onnx:int4,onnx:int8,gguf:q4_k_m,gguf:q8_0"),
    "max_size_bytes": Flag("--max-size", cli_type=str),
    "isolate": Flag("--isolate/--no-isolate", note="--no-isolate measures in this process: faster, but peak RSS is then not per candidate"),
}


def register(parent: typer.Typer) -> None:
    @config_command(parent, "optimize", config=OptimizeConfig, stage="optimize", flags=_FLAGS)
    def optimize(
        model: Annotated[str, typer.Argument(help="The model to export (name, ref, ./hf-folder).")],
        data: Annotated[str, Opt("--data", "-d", help="Dataset (ref or file) for the parity checks.")],
        name: ReportNameOpt = None,
        profile: Annotated[str | None, Opt("--profile", help="Device profile (slmops profile ls): its size/speed limits become gates, its formats filter the targets.")] = None,
        as_json: JsonOpt = False,
        *,
        cfg: dict[str, Any],
    ) -> None:
        """Export MODEL to every target, measure size, speed, peak RSS and parity, and mark the best that passes."""
        with open_cli_store() as store, progress_bars(not as_json):
            if profile:
                from slmops.deploy.profiles import apply_profile, load_profile

                cfg = apply_profile({"targets": default_of(OptimizeConfig.model_fields["targets"]), **cfg}, load_profile(store, profile))
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
