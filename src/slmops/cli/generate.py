"""``slmops generate`` (one prompt) and ``slmops chat`` (interactive, with the model's chat template)."""

from __future__ import annotations

import re
import sys
import time
from typing import Annotated, Any

import typer

from slmops import formats
from slmops.cli.common import JsonOpt, open_cli_store
from slmops.cli.flags import UNSET, Flag, config_command
from slmops.cli.render import emit, err, out
from slmops.pipeline.inputs import resolve_input
from slmops.runtimes.base import GenerationParams

System = Annotated[str | None, typer.Option("--system", help="System message (chat mode).")]
Runtime = Annotated[str, typer.Option("--runtime", help="auto (by the artifact's format), torch, ort-genai or llamacpp.")]

#: The sampling settings both commands offer (the rest of GenerationParams is for the server and benchmarks).
_SAMPLING = ("max_tokens", "temperature", "top_p", "top_k", "seed")
_NOT_HERE = "a server/benchmark setting: set it in the request (slmops serve) or the bench config"


def _sampling(only: tuple[str, ...], **defaults: Any) -> dict[str, Any]:
    """``config_command`` arguments for the GenerationParams flags of a command, with its own defaults."""
    flags = {name: Flag(default=value) for name, value in defaults.items()}
    flags["temperature"] = Flag("--temperature", "-t", default=defaults.get("temperature", UNSET))
    flags["stop"] = Flag("--stop", multiple=True)
    return {"config": GenerationParams, "flags": flags, "only": only, "only_why": _NOT_HERE, "panel": "Sampling"}

CHAT_HELP = "commands: /reset clears the history, /exit (or /quit, Ctrl-D) quits, /help shows this"
_COMMAND = re.compile(r"^/[A-Za-z?]+$")


def chat_command(line: str) -> str | None:
    """The chat command a line is (``/help``, ``/reset`` …, lower-cased), or None for a message to the model."""
    text = line.strip()
    return text.lower() if _COMMAND.match(text) else None


def _params(cfg: dict[str, Any]) -> GenerationParams:
    from pydantic import ValidationError

    from slmops.errors import ConfigError

    try:
        return GenerationParams(**cfg)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "value"
        raise ConfigError(f"--{field.replace('_', '-')} {first.get('input')!r} is out of range", why=str(first["msg"]),
                          fix=f"see slmops generate --help for --{field.replace('_', '-')}") from None


def register(app: typer.Typer) -> None:
    @config_command(app, "generate", **_sampling((*_SAMPLING, "stop"), max_tokens=64, temperature=0.0))
    def generate(
        model: Annotated[str, typer.Argument(help="Model reference (name, name:3, name@prod, sha256:…, ./folder, ./model.gguf, pkg:PACKAGE).")],
        prompt: Annotated[str, typer.Argument(help="The prompt.")],
        raw: Annotated[bool, typer.Option("--raw", help="Send the prompt as-is instead of through the chat template.")] = False,
        system: System = None,
        runtime: Runtime = "auto",
        as_json: JsonOpt = False,
        *,
        cfg: dict[str, Any],
    ) -> None:
        """Generate a completion for one prompt, streaming tokens as they come (or --json at the end)."""
        from slmops.runtimes import open_runtime

        params = _params(cfg)
        with open_cli_store() as store:
            art = resolve_input(model, store, kind=formats.runnable_kinds())
        rt = open_runtime(art, runtime=runtime)
        try:
            text = prompt if raw else rt.apply_chat_template(
                ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}])
            if as_json:
                res = rt.generate(text, params)
                emit({"model": model, "digest": art.digest, "text": res.text, "finish_reason": res.finish_reason,
                      "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
                      "ttft_s": res.ttft_s, "total_s": res.total_s}, True, lambda d: None)
                return
            start = time.perf_counter()
            n = 0
            finish = None
            for ev in rt.stream(text, params):
                sys.stdout.write(ev.text)
                sys.stdout.flush()
                n += 1
                finish = ev.finish_reason or finish
            sys.stdout.write("\n")
            dt = time.perf_counter() - start
            err.print(f"{n} tokens in {dt:.2f}s ({n / dt if dt else 0:.1f} tok/s), finish_reason={finish}", style="dim")
        finally:
            rt.close()

    @config_command(app, "chat", **_sampling(_SAMPLING, max_tokens=256, temperature=0.7, top_p=0.95))
    def chat(
        model: Annotated[str | None, typer.Argument(help="Model reference (local), or the model id on the server with --url.")] = None,
        url: Annotated[str | None, typer.Option("--url", help="Talk to an OpenAI-compatible server instead (slmops, Ollama, llama.cpp, Foundry Local), e.g. http://127.0.0.1:8000/v1.")] = None,
        model_id: Annotated[str | None, typer.Option("--model", help="Model id on the --url server (default: MODEL, else the server's first model).")] = None,
        api_key_env: Annotated[str | None, typer.Option("--api-key-env", help="Environment variable with the server's API key (with --url).")] = None,
        system: System = None,
        runtime: Runtime = "auto",
        *,
        cfg: dict[str, Any],
    ) -> None:
        """Chat interactively with a model through its own chat template, locally or on a server (--url); /reset clears, /exit or Ctrl-D quits."""
        from collections.abc import Iterator

        from slmops.errors import ConfigError

        rt: Any = None
        params = _params(cfg)
        if url is not None:
            from slmops.client import OpenAIClient, chat_body, delta_text, normalize_base_url

            client = OpenAIClient(normalize_base_url(url), api_key_env=api_key_env, timeout_s=300.0, purpose="chat --url")
            rt = client  # closed when the chat ends
            name = model_id or model or next(iter(client.models()), None)
            if name is None:
                raise ConfigError(f"{url} lists no models", fix="pass --model ID")

            def respond(history: list[dict[str, str]]) -> Iterator[str]:
                body = chat_body(name, history, max_tokens=params.max_tokens, temperature=params.temperature, seed=params.seed,
                                 top_p=params.top_p, top_k=params.top_k or None)
                return (text for chunk in client.stream(body) if (text := delta_text(chunk)))

            err.print(f"chatting with {name} at {url}; /help lists the commands", style="dim")
        else:
            from slmops.runtimes import open_runtime

            if model is None:
                raise ConfigError("chat needs a MODEL, or --url URL for a server", fix="e.g. `slmops chat bot@prod` or `slmops chat --url http://127.0.0.1:8000/v1 --model bot`")
            with open_cli_store() as store:
                art = resolve_input(model, store, kind=formats.runnable_kinds())
            rt = open_runtime(art, runtime=runtime)
            local = rt

            def respond(history: list[dict[str, str]]) -> Iterator[str]:
                return (ev.text for ev in local.stream(local.apply_chat_template(history), params))

            err.print(f"chatting with {model} (sha256:{art.short}); /help lists the commands", style="dim")
        history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        try:
            while True:
                try:
                    line = input("you> ")
                except EOFError:
                    break
                command = chat_command(line)
                if command in ("/exit", "/quit"):
                    break
                if command == "/reset":
                    history = history[:1] if system else []
                    continue
                if command is not None:  # /help, /? or an unknown /word: answered here, never sent to the model
                    err.print(CHAT_HELP if command in ("/help", "/?") else f"unknown command {command}; {CHAT_HELP}", markup=False)
                    continue
                if not line.strip():
                    continue
                history.append({"role": "user", "content": line})
                out.print("model>", style="bold", end=" ")
                reply = []
                for text in respond(history):
                    sys.stdout.write(text)
                    sys.stdout.flush()
                    reply.append(text)
                sys.stdout.write("\n")
                history.append({"role": "assistant", "content": "".join(reply)})
        finally:
            if rt is not None:
                rt.close()
