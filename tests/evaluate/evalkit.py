"""Shared fixtures for the evaluate, bench and report tests (imported by their conftest files).

One tiny random Llama is built per session in a store of its own; a test that needs it in its own
store (``model``) imports that folder, which is cheap. Servers run on 127.0.0.1 in a thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def eval_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A store of this session's own for the shared tiny model (and the server that serves it)."""
    from slmops.store.registry import Store

    store = Store(tmp_path_factory.mktemp("eval_models"))
    yield store
    store.close()


@pytest.fixture(scope="session")
def tiny_llama(eval_store: Any) -> Any:
    from slmops.testing.tiny import tiny_model

    return tiny_model("llama", store=eval_store, name="tiny-llama")


@pytest.fixture(scope="session")
def tiny_rt(tiny_llama: Any) -> Iterator[Any]:
    from slmops.runtimes import open_runtime

    rt = open_runtime(tiny_llama)
    yield rt
    rt.close()


@pytest.fixture
def model(store: Any, tiny_llama: Any) -> Any:
    """The tiny Llama, imported into this test's store (its own artifact, so lineage can be checked)."""
    from slmops.stage.inputs import resolve_input

    return resolve_input(str(tiny_llama.path), store)


@pytest.fixture
def intent_data(store: Any) -> Any:
    from slmops.stage.runner import run_stage

    return run_stage("data.synth", {}, {"task": "support-intent", "n": 40}, store=store).artifact


def label_script(messages: list[dict[str, Any]]) -> str:
    """A 'model' that knows the answers of the support-intent task (it reads the intent off the wording)."""
    from slmops.data.synth.tasks import INTENTS

    text = messages[-1]["content"].lower()
    words = set(text.replace(".", " ").replace(",", " ").replace("?", " ").split())
    best, score = "billing", -1
    for intent, templates in INTENTS.items():
        vocab = {w for t in templates for w in t.lower().replace(".", " ").replace(",", " ").replace("?", " ").split() if "{" not in w}
        s = len(words & vocab)
        if s > score:
            best, score = intent, s
    return best


@pytest.fixture(scope="session")
def label_server() -> Iterator[str]:
    """A server that answers support-intent queries with a (mostly right) label."""
    from oai_server import make_app, serve

    with serve(make_app(script=label_script, model_id="labeller")) as url:
        yield url


@pytest.fixture(scope="session")
def tiny_server(eval_store: Any, tiny_llama: Any) -> Iterator[str]:
    """slmops' own OpenAI-compatible server (``slmops serve``) over the tiny torch model, on 127.0.0.1."""
    from oai_server import serve

    from slmops.serve.app import create_app
    from slmops.serve.config import ServeConfig

    app = create_app(ServeConfig(models=["tiny-llama"], port=0, log_requests=False), store=eval_store)
    with serve(app) as url:
        yield url


def fragile_script(messages: list[dict[str, Any]]) -> str:
    """A 'model' that crashes (HTTP 500) on a lone surrogate, as a server with a tokenizer bug would."""
    text = " ".join(str(m.get("content", "")) for m in messages)
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        raise RuntimeError("tokenizer cannot encode surrogates")
    return label_script(messages) if messages else "ok"


@pytest.fixture(scope="session")
def fragile_server() -> Iterator[str]:
    from oai_server import make_app, serve

    with serve(make_app(script=fragile_script, model_id="fragile")) as url:
        yield url


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Any:
    """Run the real CLI in-process: returns (exit code, stdout, stderr)."""
    from slmops.cli.main import main

    def run(*args: str) -> tuple[int, str, str]:
        code = 0
        try:
            main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
