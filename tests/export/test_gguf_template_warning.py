"""The GGUF export warns when it copies an unsafe or broken chat template into the file (issue 17 item 10).

llama.cpp, Ollama and other runtimes render a GGUF's template with engines of their own, outside
slmops' sandbox, so a template that reaches for Python internals is worth a word before the file
is distributed; a plain template exports without one.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from slmops.stage.runner import run_stage

UNSAFE = "{% for m in messages %}{{ m.content.__class__.__mro__ }}{% endfor %}"


def export_with_template(store: Any, folder: Path, template: str | None) -> Any:
    if template is not None:
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
        cfg["chat_template"] = template
        (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    with store.staging() as tmp:
        for f in folder.iterdir():
            shutil.copy2(f, tmp / f.name)
        model = store.commit(tmp, kind="model", format="hf-safetensors")
    return run_stage("export.gguf", {"model": model}, {"qtype": "f32"}, store=store).artifact


def test_an_unsafe_chat_template_is_exported_with_a_warning(store: Any, hf_copy: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="slmops.models.gguf_vocab"):
        art = export_with_template(store, hf_copy(), UNSAFE)
    warned = [r.getMessage() for r in caplog.records if r.name == "slmops.models.gguf_vocab"]
    assert any("unsafe or broken" in m and "unsafe operation" in m for m in warned), warned
    assert (art.path / "model.gguf").is_file()  # still written: the template is the model's own


def test_a_plain_chat_template_exports_without_a_warning(store: Any, hf_copy: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="slmops.models.gguf_vocab"):
        export_with_template(store, hf_copy(), None)
    assert not [r for r in caplog.records if r.name == "slmops.models.gguf_vocab" and "chat template" in r.getMessage()]
