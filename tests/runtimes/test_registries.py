"""A new format and runtime are one registration each: a toy one registered in-process is picked up everywhere.

``toy-chars`` is a format (a folder holding ``toy.json``: an alphabet) and ``toy`` the runtime that
runs it: character tokens, and a "model" that always predicts the next letter of its alphabet. It
is registered with :func:`slmops.formats.register_format` and :func:`slmops.runtimes.register_runtime`
only; then ``open_runtime(auto)``, format detection, the device profiles' formats, the manifest's
library versions, the server (resolution, engine choice from capabilities, a chat completion),
``eval`` and ``bench`` all use it without another line naming it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slmops import formats
from slmops.errors import ConfigError
from slmops.formats import Format, register_format, unregister_format
from slmops.runtimes import Capabilities, open_runtime, planned_runtime, register_runtime, unregister_runtime
from slmops.runtimes.base import GenerationParams, LoadInfo, TokenEvent, decode_loop
from slmops.runtimes.common import EngineCommon

ALPHABET = "abcdefghijklmnopqrstuvwxyz "


class _NextLetter:
    """The toy model's forward pass: the next letter of the alphabet after the last token."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab

    def logits(self, token: int) -> np.ndarray:
        row = np.zeros(self.vocab, dtype=np.float32)
        row[(token + 1) % (self.vocab - 1)] = 10.0  # never EOS (the last id)
        return row

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        return self.logits(int(ids[-1]))

    def step(self, token_id: int) -> np.ndarray:
        return self.logits(token_id)


class ToyRuntime(EngineCommon):
    """A character-level runtime over ``toy.json``'s alphabet; the last id is EOS."""

    name = "toy"

    def __init__(self, path: Path) -> None:
        self.alphabet = json.loads((path / "toy.json").read_text())["alphabet"]
        self.capabilities = Capabilities(adapters=False, batching=False)
        self.info = LoadInfo(source=str(path), format="toy-chars")
        self._lock = threading.RLock()
        self._closed = False
        self.bos_token_id = None

    context_length = 256
    adapters: tuple[str, ...] = ()

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet) + 1

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return frozenset({len(self.alphabet)})

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError("closed")

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [self.alphabet.index(c) for c in text.lower() if c in self.alphabet]

    def detokenize(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(self.alphabet[i] for i in ids if i < len(self.alphabet))

    def apply_chat_template(self, messages: Sequence[Any], add_generation_prompt: bool = True, **extra: Any) -> str:
        return " ".join(str(m["content"]) for m in messages) + (" " if add_generation_prompt else "")

    def _stream(self, ids: list[int], params: GenerationParams, adapter: str | None) -> Iterator[TokenEvent]:
        with self._lock:
            yield from decode_loop(_NextLetter(self.vocab_size), ids, params, decode=self.detokenize,
                                   eos_token_ids=self.eos_token_ids, context_length=self.context_length)

    def _logits(self, ids: list[int], *, last_only: bool, adapter: str | None) -> np.ndarray:
        rows = np.stack([_NextLetter(self.vocab_size).logits(t) for t in ids])
        return rows[-1] if last_only else rows

    def load_adapter(self, name: str, path: str | Path) -> None:
        raise ConfigError("the toy runtime takes no adapters", fix="serve the model alone")

    def unload_adapter(self, name: str) -> bool:
        return False

    def close(self) -> None:
        self._closed = True


@pytest.fixture
def toy() -> Iterator[None]:
    register_format(Format("toy-chars", kind="model", title="a toy model", libs=("numpy",), markers=("toy.json",), measure="reference"))
    register_runtime("toy", lambda path, **_: ToyRuntime(Path(path)), formats=("toy-chars",), capabilities=Capabilities(), title="toy")
    yield
    unregister_runtime("toy")
    unregister_format("toy-chars")


def _toy_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "toy.json").write_text(json.dumps({"alphabet": ALPHABET}))
    return path


@pytest.fixture
def toy_model(toy: None, store: Any, tmp_path: Path) -> Any:
    with store.staging() as tmp:
        _toy_folder(tmp)
        return store.commit(tmp, kind="model", format="toy-chars", name="toy-bot")


def test_the_registries_know_the_new_format_and_runtime(toy: None, store: Any, tmp_path: Path) -> None:
    from slmops.deploy.profiles import DeviceProfile
    from slmops.runtimes import detect_format

    folder = _toy_folder(tmp_path / "plain")
    assert detect_format(folder) == "toy-chars" and planned_runtime(folder).name == "toy"
    with open_runtime(folder) as rt:  # auto: the runtime registered for the folder's format
        assert rt.name == "toy" and rt.generate("abc", GenerationParams(max_tokens=3)).text == "def"
    assert formats.runtimes_for("toy-chars") == ("toy",) and "model" in formats.model_kinds()
    assert "toy-chars" in DeviceProfile(name="edge").formats  # a profile may allow it
    with pytest.raises(ConfigError, match="cannot run a 'toy-chars' artifact"):
        open_runtime(folder, runtime="torch")
    with store.staging() as tmp:
        _toy_folder(tmp)
        art = store.commit(tmp, kind="model", format="toy-chars")
    assert "numpy" in art.manifest.versions  # the format's libraries are recorded in its artifacts' manifests


def test_gone_when_unregistered(tmp_path: Path) -> None:
    folder = _toy_folder(tmp_path / "plain")
    assert formats.get("toy-chars") is None
    with pytest.raises(ConfigError, match="cannot tell what kind of model"):
        open_runtime(folder)


def test_served_through_the_registries(toy_model: Any, store: Any, tmp_path: Path) -> None:
    import httpx

    from slmops.serve import ServeConfig, create_app
    from slmops.testing.server import running_server

    app = create_app(ServeConfig(models=["toy-bot"], request_log=tmp_path / "requests.db"), store=store)
    with running_server(app) as url:
        body = {"model": "toy-bot", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "abcd"  # after "hi ": the alphabet from its start
        entry = next(iter(app.state.service.pool.entries.values()))
        assert entry.runtime.name == "toy" and entry.engine.slots == 1  # no batching declared: one request at a time
        lora = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(tmp_path), "base_model": "toy-bot"}, timeout=30)
        assert lora.status_code == 400


def test_eval_and_bench_pick_it_up(toy_model: Any, store: Any) -> None:
    from slmops.evaluate.report import load_report
    from slmops.stage.runner import run_stage

    data = run_stage("data.synth", {}, {"task": "support-intent", "n": 10}, store=store).artifact
    ev = run_stage("eval", {"model": toy_model, "data": data}, {"metrics": ["exact_match"], "max_tokens": 3, "limit": 3}, store=store).artifact
    assert load_report(ev)["target"]["runtime"] == "toy"
    bench = run_stage("bench", {"model": toy_model}, {"prompt_tokens": [4], "output_tokens": [3], "warmup": 0, "repetitions": 1,
                                                      "isolate": False}, store=store).artifact
    rep = load_report(bench)
    assert rep["runtime"] == "toy" and rep["summary"]["completed"] == 1
