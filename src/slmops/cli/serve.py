"""``slmops serve`` (the OpenAI-compatible server) and ``slmops logs`` (its request log)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from slmops.cli.common import JsonOpt
from slmops.cli.render import emit, err, out, warn
from slmops.errors import ConfigError
from slmops.settings import api_key_from_env


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        models: Annotated[list[str] | None, typer.Argument(help="Model ids to serve (bot, bot:3, bot@prod, adapters, or a ./file.gguf, ./folder or pkg:PACKAGE to import and serve); none = every model in the store.")] = None,
        host: Annotated[str | None, typer.Option("--host", help="Address to bind (default 127.0.0.1, or the bundle's serve.json); keep loopback unless you mean to expose it (then set --api-key-env).")] = None,
        port: Annotated[int | None, typer.Option("--port", help="TCP port (default 8000, or the bundle's serve.json).")] = None,
        api_key_env: Annotated[str | None, typer.Option("--api-key-env", help="Environment variable holding the API key; every route but /health then needs 'Authorization: Bearer KEY'.")] = None,
        metrics_public: Annotated[bool, typer.Option("--metrics-public", help="Serve /metrics without the API key.")] = False,
        cors_origin: Annotated[list[str] | None, typer.Option("--cors-origin", help="Allow this browser origin (repeatable); CORS is off otherwise.")] = None,
        allowed_host: Annotated[list[str] | None, typer.Option("--allowed-host", help="Without an API key, answer this Host name too (repeatable; '*' = any). Only localhost, 127.0.0.1, [::1] and --host otherwise (DNS-rebinding protection).")] = None,
        max_body: Annotated[str, typer.Option("--max-body", help="Largest request body accepted (e.g. 8MiB, 500KB); larger ones get 413.")] = "8MiB",
        render_timeout: Annotated[str, typer.Option("--render-timeout", help="Longest a chat template may take to render per request (e.g. 2s); within --timeout.")] = "2s",
        max_queue: Annotated[int, typer.Option("--max-queue", help="Requests that may wait per model; more get 503 + Retry-After.")] = 16,
        parallel: Annotated[int, typer.Option("--parallel", help="Requests generating at once per model (batched on torch and llama.cpp; ONNX Runtime runs one at a time).")] = 4,
        timeout: Annotated[str, typer.Option("--timeout", help="Longest a request may take, queueing included (e.g. 300s, 5m).")] = "300s",
        ttl: Annotated[str, typer.Option("--ttl", help="Unload a model idle this long (e.g. 10m; 0 = never).")] = "10m",
        max_loaded: Annotated[int, typer.Option("--max-loaded", help="Most models loaded at once (least recently used idle one evicted).")] = 2,
        canary: Annotated[list[str] | None, typer.Option("--canary", help="Split traffic for the first ref by weight: bot@prod=90,bot@canary=10 (repeatable).")] = None,
        runtime: Annotated[str, typer.Option("--runtime", help="auto (by the artifact's format), torch, ort-genai or llamacpp.")] = "auto",
        threads: Annotated[int | None, typer.Option("--threads", help="CPU threads per forward pass, torch or llama.cpp (fewer than cores helps on a busy machine).")] = None,
        default_max_tokens: Annotated[int | None, typer.Option("--default-max-tokens", help="max_tokens when a request sets none (default: the rest of the context).")] = None,
        log_db: Annotated[Path | None, typer.Option("--log-db", help="Request log file (default $SLMOPS_HOME/serve/requests.db).")] = None,
        no_request_log: Annotated[bool, typer.Option("--no-request-log", help="Do not record requests.")] = False,
        log_content: Annotated[bool, typer.Option("--log-content", help="Also record prompts and completions (off by default: privacy first).")] = False,
        preload: Annotated[bool, typer.Option("--preload", help="Load the listed models now instead of on first request.")] = False,
        drift_baseline: Annotated[str | None, typer.Option("--drift-baseline", help="Dataset to check logged prompts against periodically (needs --log-content); sets slmops_drift_score.")] = None,
        drift_every: Annotated[str, typer.Option("--drift-every", help="Time between drift checks (e.g. 5m).")] = "5m",
        judge: Annotated[str | None, typer.Option("--judge", help="OpenAI-compatible base URL (…/v1) of a judge that re-scores sampled requests (needs --log-content); sets slmops_quality_score.")] = None,
        judge_model: Annotated[str, typer.Option("--judge-model", help="Model id the judge endpoint serves.")] = "judge",
        judge_rate: Annotated[float, typer.Option("--judge-rate", help="Share of logged requests the judge scores (stable per request).")] = 0.05,
        judge_every: Annotated[str, typer.Option("--judge-every", help="Time between judge rounds (e.g. 5m).")] = "5m",
        judge_api_key_env: Annotated[str | None, typer.Option("--judge-api-key-env", help="Environment variable holding the judge's API key.")] = None,
        bundle: Annotated[Path | None, typer.Option("--bundle", help="Serve an edge bundle (slmops bundle): checksums verified first, no registry needed.")] = None,
    ) -> None:
        """Serve models over an OpenAI-compatible API (chat, completions, models, metrics, management)."""
        from slmops.serve import ServeConfig
        from slmops.serve import serve as run_server
        from slmops.units import parse_duration, parse_size

        api_key = api_key_from_env(api_key_env, "--api-key-env")
        spec = None
        if bundle is not None:
            from slmops.deploy.bundle import read_spec

            if models:
                raise ConfigError("--bundle serves the bundle's own model", why=f"model ids were given too: {', '.join(models)}",
                                  fix="drop the model ids, or serve from the registry without --bundle")
            spec = read_spec(bundle)  # serve.json gives the defaults; every checksum is verified before serving
        if models and bundle is None:
            from slmops.serve.paths import served_id
            from slmops.store.registry import Store

            with Store() as check:  # files, folders and pkg: refs are imported and served under a registry name
                ids = [served_id(m, check) for m in models]
            for m, i in zip(models, ids, strict=True):
                if m != i:
                    err.print(f"{m} is served as {i}", style="dim", highlight=False)
            models = ids
        saved = (spec or {}).get("serve", {})
        host = host or saved.get("host") or "127.0.0.1"
        port = port if port is not None else int(saved.get("port", 8000))
        cfg = ServeConfig(
            models=[spec["name"]] if spec else list(models or []),
            host=host,
            port=port,
            api_key=api_key,
            metrics_auth=not metrics_public,
            cors_origins=list(cors_origin or []),
            allowed_hosts=list(allowed_host or []),
            max_body_bytes=parse_size(max_body, flag="--max-body"),
            render_timeout_s=parse_duration(render_timeout, flag="--render-timeout"),
            max_queue=max_queue,
            parallel=parallel,
            timeout_s=parse_duration(timeout, flag="--timeout"),
            ttl_s=parse_duration(ttl, flag="--ttl"),
            max_loaded=max_loaded,
            runtime=runtime,
            threads=threads,
            default_max_tokens=default_max_tokens,
            log_requests=not no_request_log,
            request_log=log_db,
            log_content=log_content,
            preload=preload,
            drift_baseline=drift_baseline,
            drift_every_s=parse_duration(drift_every, flag="--drift-every"),
            judge_url=judge,
            judge_model=judge_model,
            judge_api_key=api_key_from_env(judge_api_key_env, "--judge-api-key-env"),
            judge_rate=judge_rate,
            judge_every_s=parse_duration(judge_every, flag="--judge-every"),
        )
        for flag, used in (("--drift-baseline", drift_baseline), ("--judge", judge)):
            if used and not log_content:
                raise ConfigError(f"{flag} needs --log-content", why=f"{flag} works on the logged prompts, which are only kept with --log-content",
                                  fix="add --log-content (prompts and completions are then stored in the request log)")
        if drift_baseline and bundle is None:
            from slmops.pipeline.inputs import resolve_input
            from slmops.store.registry import Store

            with Store() as check:  # fail now, not inside the periodic task
                resolve_input(drift_baseline, check, kind="dataset")
        for split in canary or []:
            cfg.add_canary(split)
        if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
            warn(f"serving on {host} without an API key: anyone who can reach it can use it (set --api-key-env)")
        served = ", ".join([*cfg.models, *cfg.canary]) or "every model in the store"
        err.print(f"slmops serve: {served} on http://{host}:{port}/v1 (Ctrl-C stops)", style="dim")
        if bundle is not None:
            from slmops.deploy.bundle import opened_bundle

            with opened_bundle(bundle) as (bstore, spec):
                err.print(f"bundle {bundle}: every checksum verified; serving {spec['name']} (sha256:{spec['digest'][:12]})", style="dim")
                run_server(cfg, store=bstore)
            return
        run_server(cfg)

    @app.command()
    def logs(
        since: Annotated[str | None, typer.Option("--since", help="Only requests newer than this (e.g. 15m, 2h, 1d).")] = None,
        model: Annotated[str | None, typer.Option("--model", help="Only this model id or version (bot@prod, bot:3).")] = None,
        limit: Annotated[int, typer.Option("--limit", help="Most rows to show, newest first.")] = 50,
        log_db: Annotated[Path | None, typer.Option("--log-db", help="Request log file (default $SLMOPS_HOME/serve/requests.db).")] = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Show the server's request log (metadata; prompts and completions only if served with --log-content)."""
        from slmops.monitor.requestlog import default_path, query
        from slmops.settings import slmops_home
        from slmops.units import parse_duration

        path = log_db or default_path(slmops_home())
        since_ts = time.time() - parse_duration(since, flag="--since") if since else None
        rows = query(path, since=since_ts, model=model, limit=limit)
        emit(rows, as_json, lambda r: _table(r, path))


def _table(rows: list[dict], path: Path) -> None:
    from rich.table import Table

    if not rows:
        out.print(f"no requests logged in {path}")
        return
    t = Table(box=None)
    for col in ("time", "model", "version", "route", "status", "prompt", "completion", "ttft", "latency", "client"):
        t.add_column(col)

    def s(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}s"

    for r in rows:
        t.add_row(r["time"], r["model"] or "-", r["version"] or "-", r["route"] or "-", str(r["status"]),
                  str(r["prompt_tokens"] or 0), str(r["completion_tokens"] or 0), s(r["ttft_s"]), s(r["latency_s"]), r["client"] or "-")
    out.print(t)
