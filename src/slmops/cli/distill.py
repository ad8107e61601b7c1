"""``slmops distill``: generate (a teacher answers prompts), train (a student learns), report (retention)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from slmops.cli.common import JsonOpt, ResultNameOpt, open_cli_store
from slmops.cli.flags import ConfigFlags, Flag, config_command, parse_pairs, read_json_file
from slmops.cli.models import print_result, result_dict
from slmops.cli.render import emit, out, progress_bars
from slmops.distill.config import GenerateConfig
from slmops.distill.report import ReportConfig
from slmops.distill.train import DEFAULTS, DistillTrainConfig
from slmops.distill.validate import ValidationConfig
from slmops.errors import ConfigError
from slmops.finetune.config import LoraConfig
from slmops.pipeline.inputs import resolve_input
from slmops.stage.runner import run_stage

app = typer.Typer(
    help="Distillation: a teacher answers prompts, a student learns from the answers, a report compares them.", no_args_is_help=True
)
Opt = typer.Option

_GENERATE_FLAGS = {
    "system_prompt": Flag("--system"),
    "chain_of_thought": Flag("--chain-of-thought/--no-chain-of-thought", "--cot"),
    "temperature": Flag("--temperature", "-t"),
    "splits": Flag("--split", multiple=True),
    "timeout_s": Flag("--timeout"),
    "cache": Flag("--cache/--no-cache"),
    "price_prompt_per_1m": Flag("--price-prompt"),
    "price_completion_per_1m": Flag("--price-completion"),
    "ray_address": Flag("--address"),
    # the answer checks (the nested ``validation`` config)
    "drop_truncated": Flag("--drop-truncated/--keep-truncated"),
    "drop_refusals": Flag("--drop-refusals/--keep-refusals"),
    "drop_duplicates": Flag("--drop-duplicates/--keep-duplicates"),
    "refusal_patterns": Flag("--refusal-pattern", multiple=True),
    "json_schema": Flag("--json-schema", cli_type=Path, parse=read_json_file, note="a JSON Schema file"),
    "labels": Flag("--label", multiple=True),
}


@config_command(app, "generate", config=GenerateConfig, stage="distill.generate", flags=_GENERATE_FLAGS,
                nested={"validation": ValidationConfig})
def generate(
    prompts: Annotated[str, Opt("--prompts", help="Prompts dataset (ref or file): prompt, chat or instruction records.")],
    teacher: Annotated[
        str | None, Opt("--teacher", help="Local teacher model ref, or an http(s):// endpoint URL (same as --base-url).")
    ] = None,
    name: ResultNameOpt = None,
    as_json: JsonOpt = False,
    *,
    cfg: dict[str, Any],
) -> None:
    """A teacher (endpoint or local model) answers the prompts; checked answers become a dataset. Rerun to resume."""
    if teacher and teacher.startswith(("http://", "https://")):
        if cfg.get("base_url", teacher) != teacher:
            raise ConfigError("--teacher is a URL and --base-url names another", fix="give the endpoint once")
        cfg["base_url"], teacher = teacher, None
    cfg.setdefault("validation", {})
    with open_cli_store() as store, progress_bars(not as_json):
        inputs = {"prompts": resolve_input(prompts, store, kind="dataset")}
        if teacher:
            inputs["teacher"] = resolve_input(teacher, store, kind="model")
        r = run_stage("distill.generate", inputs, cfg, store=store, output_name=name)
    emit(result_dict(r, name), as_json, print_result)


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


#: The fine-tuning settings ``distill train`` names as flags (the rest go through --set); defaults per method from distill.train.
_TRAIN_SETTINGS = ConfigFlags(
    LoraConfig, "finetune.lora", prefix="train__", panel="Fine-tuning",
    only=("epochs", "learning_rate", "batch_size", "max_steps", "max_length", "lora_rank", "seed"),
    only_why="any other fine-tuning setting: --set KEY=VALUE (see slmops finetune --help)",
    flags={"learning_rate": Flag("--learning-rate", "--lr", default_text="; ".join(f"{d['learning_rate']:g} for {m}" for m, d in DEFAULTS.items())),
           "epochs": Flag(default_text="; ".join(dict.fromkeys(str(d["epochs"]) for d in DEFAULTS.values())))},
)


@config_command(app, "train", config=DistillTrainConfig, stage="distill.train", more={"settings": _TRAIN_SETTINGS},
                hidden={"train": "its settings are the Fine-tuning flags (--epochs, --lr, …) and --set KEY=VALUE"})
def train(
    student: Annotated[str, Opt("--student", help="Student model ref.")],
    data: Annotated[str, Opt("--data", help="Synthetic dataset from `distill generate` (or any chat dataset).")],
    teacher: Annotated[str | None, Opt("--teacher", help="Local teacher model for logit KD (same tokenizer as the student).")] = None,
    set_: Annotated[list[str] | None, Opt("--set", help="Any other fine-tuning setting: KEY=VALUE (repeatable).")] = None,
    name: ResultNameOpt = None,
    as_json: JsonOpt = False,
    *,
    cfg: dict[str, Any],
    settings: dict[str, Any],
) -> None:
    """The student learns from the teacher: SFT on its answers plus logit KD (local teacher logits or stored top-k)."""
    cfg["train"] = {**parse_pairs(set_, "--set", "warmup_ratio=0.1", _json_or_text, fields=True), **settings}
    with open_cli_store() as store, progress_bars(not as_json):
        inputs = {"student": resolve_input(student, store, kind="model"), "data": resolve_input(data, store, kind="dataset")}
        if teacher:
            inputs["teacher"] = resolve_input(teacher, store, kind="model")
        r = run_stage("distill.train", inputs, cfg, store=store, output_name=name)
    emit(result_dict(r, name), as_json, print_result)


@config_command(app, "report", config=ReportConfig, stage="distill.report")
def report(
    teacher: Annotated[str, Opt("--teacher", help="Teacher model ref.")],
    student: Annotated[str, Opt("--student", help="Student model ref.")],
    data: Annotated[str, Opt("--data", help="Labelled dataset to measure on (e.g. the built-in task).")],
    name: ResultNameOpt = None,
    as_json: JsonOpt = False,
    *,
    cfg: dict[str, Any],
) -> None:
    """Teacher vs student: parameters, size, peak memory, latency, throughput, accuracy, and the retention ratios."""
    with open_cli_store() as store, progress_bars(not as_json):
        inputs = {
            "teacher": resolve_input(teacher, store, kind="model"),
            "student": resolve_input(student, store, kind="model"),
            "data": resolve_input(data, store, kind="dataset"),
        }
        r = run_stage("distill.report", inputs, cfg, store=store, output_name=name)
    emit(result_dict(r, name), as_json, _print_report)


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="distill")


def _print_report(d: dict[str, Any]) -> None:
    m = d["metrics"]
    t = Table(title=f"distill report sha256:{d['digest'][:12]}" + (" (cached)" if d["cached"] else ""))
    for col in ("", "teacher", "student"):
        t.add_column(col)
    for k in ("parameters", "weights_bytes", "model_rss_bytes", "peak_rss_bytes", "mean_latency_s", "throughput_tok_s", "accuracy"):
        t.add_row(k, *(f"{v:.4g}" if isinstance(v := m.get(f"{who}_{k}"), float) else str(v) for who in ("teacher", "student")))
    out.print(t)
    for k in ("parameter_ratio", "size_reduction_pct", "latency_reduction_pct", "memory_reduction_pct", "accuracy_retention_pct"):
        out.print(f"  {k}: {m.get(k)}")
