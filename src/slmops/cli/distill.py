"""``slmops distill``: generate (a teacher answers prompts), train (a student learns), report (retention)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from slmops.cli.common import JsonOpt, open_cli_store
from slmops.cli.models import print_result, result_dict
from slmops.cli.render import emit, out, progress_bars
from slmops.distill.config import GenerateConfig
from slmops.errors import ConfigError
from slmops.finetune.config import OPTION_FIELDS as FT_OPTIONS
from slmops.stage import split_options
from slmops.stage.inputs import resolve_input
from slmops.stage.runner import run_stage

app = typer.Typer(
    help="Distillation: a teacher answers prompts, a student learns from the answers, a report compares them.", no_args_is_help=True
)
NameOpt = Annotated[str | None, typer.Option("--name", "-n", help="Registry name for the result.")]
Opt = typer.Option


def _set(cfg: dict[str, Any], **values: Any) -> dict[str, Any]:
    """Only the flags that were given: unset ones keep the config's defaults."""
    cfg.update({k: v for k, v in values.items() if v is not None})
    return cfg


@app.command()
def generate(
    prompts: Annotated[str, Opt("--prompts", help="Prompts dataset (ref or file): prompt, chat or instruction records.")],
    teacher: Annotated[
        str | None, Opt("--teacher", help="Local teacher model ref, or an http(s):// endpoint URL (same as --base-url).")
    ] = None,
    base_url: Annotated[str | None, Opt("--base-url", help="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1.")] = None,
    model: Annotated[str | None, Opt("--model", help="Model name at the endpoint.")] = None,
    api_key_env: Annotated[str | None, Opt("--api-key-env", help="Environment variable holding the API key (never stored).")] = None,
    api_key_header: Annotated[str | None, Opt("--api-key-header", help="authorization (Bearer, OpenAI) or api-key (Azure).")] = None,
    task: Annotated[str | None, Opt("--task", help="conversation, qa, classification, extraction, summarization or math.")] = None,
    system: Annotated[str | None, Opt("--system", help="System prompt for every request (replaces the prompts' own).")] = None,
    cot: Annotated[bool, Opt("--chain-of-thought", "--cot", help="Teacher reasons first; only its final answer is kept.")] = False,
    samples: Annotated[int | None, Opt("--samples", help="Answers per prompt.")] = None,
    temperature: Annotated[float | None, Opt("--temperature", "-t", help="Teacher sampling temperature.")] = None,
    top_p: Annotated[float | None, Opt("--top-p", help="Teacher nucleus sampling.")] = None,
    max_tokens: Annotated[int | None, Opt("--max-tokens", help="Most tokens per answer.")] = None,
    top_logprobs: Annotated[int | None, Opt("--top-logprobs", help="Keep top-k logprobs per token for logit KD (0-20).")] = None,
    seed: Annotated[int | None, Opt("--seed", help="Seed sent with each request.")] = None,
    split: Annotated[list[str] | None, Opt("--split", help="Only this split (repeatable).")] = None,
    limit: Annotated[int | None, Opt("--limit", help="At most this many prompts per split.")] = None,
    concurrency: Annotated[int | None, Opt("--concurrency", help="Requests in flight at once.")] = None,
    rpm: Annotated[float | None, Opt("--rpm", help="Requests per minute at most.")] = None,
    timeout: Annotated[float | None, Opt("--timeout", help="Seconds per HTTP request.")] = None,
    max_retries: Annotated[int | None, Opt("--max-retries", help="Retries on 429/5xx/timeouts/dropped connections.")] = None,
    no_cache: Annotated[bool, Opt("--no-cache", help="Do not reuse cached teacher responses.")] = False,
    price_prompt: Annotated[float | None, Opt("--price-prompt", help="Price per million prompt tokens (cost metric).")] = None,
    price_completion: Annotated[float | None, Opt("--price-completion", help="Price per million completion tokens.")] = None,
    min_success_ratio: Annotated[float | None, Opt("--min-success-ratio", help="Fail below this share of answered requests.")] = None,
    batch_size: Annotated[int | None, Opt("--batch-size", help="Prompts per batch (local teacher).")] = None,
    keep_work: Annotated[bool, Opt("--keep-work", help="Keep the run's work file after success.")] = False,
    executor: Annotated[str | None, Opt("--executor", help="local, or ray: shard the prompts over Ray actors (slmops[scale]).")] = None,
    workers: Annotated[int | None, Opt("--workers", help="Ray actors (shards) with --executor ray.")] = None,
    address: Annotated[str | None, Opt("--address", help="Ray cluster for --executor ray (default RAY_ADDRESS, else local).")] = None,
    keep_truncated: Annotated[bool, Opt("--keep-truncated", help="Keep answers cut off at --max-tokens.")] = False,
    keep_refusals: Annotated[bool, Opt("--keep-refusals", help="Keep answers that look like refusals.")] = False,
    keep_duplicates: Annotated[bool, Opt("--keep-duplicates", help="Keep repeated answers to the same prompt.")] = False,
    min_chars: Annotated[int | None, Opt("--min-chars", help="Drop shorter answers.")] = None,
    max_chars: Annotated[int | None, Opt("--max-chars", help="Drop longer answers.")] = None,
    expect_json: Annotated[
        bool | None, Opt("--expect-json/--no-expect-json", help="Require JSON answers (default: for --task extraction).")
    ] = None,
    json_schema: Annotated[Path | None, Opt("--json-schema", help="JSON Schema file the answers must satisfy.")] = None,
    regex: Annotated[str | None, Opt("--regex", help="Drop answers not matching this regex.")] = None,
    label: Annotated[list[str] | None, Opt("--label", help="Allowed answer for --task classification (repeatable).")] = None,
    name: NameOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A teacher (endpoint or local model) answers the prompts; checked answers become a dataset. Rerun to resume."""
    if teacher and teacher.startswith(("http://", "https://")):
        if base_url and base_url != teacher:
            raise ConfigError("--teacher is a URL and --base-url names another", fix="give the endpoint once")
        base_url, teacher = teacher, None
    validation = _set({}, min_chars=min_chars, max_chars=max_chars, expect_json=expect_json, regex=regex, labels=label or None)
    if keep_truncated:
        validation["drop_truncated"] = False
    if keep_refusals:
        validation["drop_refusals"] = False
    if keep_duplicates:
        validation["drop_duplicates"] = False
    if json_schema is not None:
        try:
            validation["json_schema"] = json.loads(json_schema.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--json-schema {json_schema} is not a readable JSON file", why=str(exc)) from exc
    cfg = _set(
        {"validation": validation},
        base_url=base_url,
        model=model,
        api_key_env=api_key_env,
        api_key_header=api_key_header,
        task=task,
        system_prompt=system,
        samples=samples,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        top_logprobs=top_logprobs,
        seed=seed,
        splits=split or None,
        limit=limit,
        concurrency=concurrency,
        rpm=rpm,
        request_timeout_s=timeout,
        max_retries=max_retries,
        price_prompt_per_1m=price_prompt,
        price_completion_per_1m=price_completion,
        min_success_ratio=min_success_ratio,
        batch_size=batch_size,
        executor=executor,
        workers=workers,
        ray_address=address,
    )
    cfg.update({k: True for k, v in (("chain_of_thought", cot), ("keep_run_dir", keep_work)) if v})
    if no_cache:
        cfg["cache"] = False
    cfg, options = split_options(cfg, GenerateConfig)
    with open_cli_store() as store, progress_bars(not as_json):
        inputs = {"prompts": resolve_input(prompts, store, kind="dataset")}
        if teacher:
            inputs["teacher"] = resolve_input(teacher, store, kind="model")
        r = run_stage("distill.generate", inputs, cfg, store=store, output_name=name, options=options)
    emit(result_dict(r, name), as_json, print_result)


def _settings(pairs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r} is not KEY=VALUE", fix="e.g. --set warmup_ratio=0.1")
        try:
            out[key.strip().replace("-", "_")] = json.loads(value)
        except ValueError:
            out[key.strip().replace("-", "_")] = value
    return out


@app.command()
def train(
    student: Annotated[str, Opt("--student", help="Student model ref.")],
    data: Annotated[str, Opt("--data", help="Synthetic dataset from `distill generate` (or any chat dataset).")],
    teacher: Annotated[str | None, Opt("--teacher", help="Local teacher model for logit KD (same tokenizer as the student).")] = None,
    method: Annotated[str, Opt("--method", help="full or lora.")] = "full",
    mode: Annotated[str, Opt("--mode", help="auto, sft, logits (local teacher) or topk (stored logprobs).")] = "auto",
    loss: Annotated[str, Opt("--loss", help="forward_kl, reverse_kl or jsd.")] = "forward_kl",
    alpha: Annotated[float, Opt("--alpha", help="Weight of KD vs cross-entropy: alpha·KD + (1−alpha)·CE.")] = 0.5,
    temperature: Annotated[float, Opt("--temperature", help="KD softmax temperature.")] = 2.0,
    jsd_beta: Annotated[float, Opt("--jsd-beta", help="JSD mixture weight.")] = 0.5,
    epochs: Annotated[int | None, Opt("--epochs", help="Passes over the data (default 3).")] = None,
    learning_rate: Annotated[
        float | None, Opt("--learning-rate", "--lr", help="Peak learning rate (default 5e-5 full, 2e-4 lora).")
    ] = None,
    batch_size: Annotated[int | None, Opt("--batch-size", help="Examples per micro-batch.")] = None,
    max_steps: Annotated[int | None, Opt("--max-steps", help="Stop after this many optimizer steps.")] = None,
    max_length: Annotated[int | None, Opt("--max-length", help="Longest training sequence in tokens.")] = None,
    lora_rank: Annotated[int | None, Opt("--lora-rank", help="LoRA rank (--method lora).")] = None,
    seed: Annotated[int | None, Opt("--seed", help="Seed.")] = None,
    set_: Annotated[list[str] | None, Opt("--set", help="Any other fine-tuning setting or run option: KEY=VALUE (repeatable).")] = None,
    save_every: Annotated[int | None, Opt("--save-every", help="Write a checkpoint every N optimizer steps (0 = only on SIGTERM).")] = None,
    resume: Annotated[bool | None, Opt("--resume/--no-resume", help="--resume: continue from the last checkpoint (error if none); "
                                       "--no-resume: start over. Default: continue when a checkpoint of this exact run exists.")] = None,
    report_to: Annotated[str | None, Opt("--report-to", help="Also log curves to: tensorboard.")] = None,
    name: NameOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The student learns from the teacher: SFT on its answers plus logit KD (local teacher logits or stored top-k)."""
    settings = _set(
        _settings(set_),
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        max_steps=max_steps,
        max_length=max_length,
        lora_rank=lora_rank,
        seed=seed,
    )
    options = _set({k: settings.pop(k) for k in FT_OPTIONS if k in settings}, save_every=save_every, report_to=report_to,
                   resume=None if resume is None else "always" if resume else "never")
    cfg = {
        "method": method,
        "mode": mode,
        "loss": loss,
        "alpha": alpha,
        "temperature": temperature,
        "jsd_beta": jsd_beta,
        "train": settings,
    }
    with open_cli_store() as store, progress_bars(not as_json):
        inputs = {"student": resolve_input(student, store, kind="model"), "data": resolve_input(data, store, kind="dataset")}
        if teacher:
            inputs["teacher"] = resolve_input(teacher, store, kind="model")
        r = run_stage("distill.train", inputs, cfg, store=store, output_name=name, options=options)
    emit(result_dict(r, name), as_json, print_result)


@app.command()
def report(
    teacher: Annotated[str, Opt("--teacher", help="Teacher model ref.")],
    student: Annotated[str, Opt("--student", help="Student model ref.")],
    data: Annotated[str, Opt("--data", help="Labelled dataset to measure on (e.g. the built-in task).")],
    split: Annotated[str, Opt("--split", help="Split to measure on.")] = "test",
    limit: Annotated[int | None, Opt("--limit", help="At most this many records.")] = 200,
    max_tokens: Annotated[int, Opt("--max-tokens", help="Most new tokens per response.")] = 32,
    metric: Annotated[str, Opt("--metric", help="auto, accuracy or exact_match.")] = "auto",
    threads: Annotated[int | None, Opt("--threads", help="torch threads per measurement.")] = None,
    name: NameOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Teacher vs student: parameters, size, peak memory, latency, throughput, accuracy, and the retention ratios."""
    cfg = _set({"split": split, "limit": limit, "max_tokens": max_tokens, "metric": metric}, threads=threads)
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
