"""Stage conformance: registered stages go through the same checks — the output is registered with the
producing stage and its config, its lineage names exactly its inputs, and a second run is a cache hit.

``EXAMPLES`` builds cheap inputs for each stage. A stage without an example must be listed in
``COVERED_ELSEWHERE`` with the test that runs it twice through the runner, so a new stage cannot slip by.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from slmops.stage import all_stages
from slmops.stage.runner import run_stage
from slmops.store import Artifact, Store

Example = Callable[[Store, Path], tuple[dict[str, Artifact], dict[str, Any]]]


def _synth(store: Store) -> Artifact:
    return run_stage("data.synth", {}, {"task": "support-intent", "n": 40}, store=store).artifact


def _model(store: Store) -> Artifact:
    return run_stage("models.init", {"data": _synth(store)}, {"arch": "llama", "vocab_size": 400}, store=store).artifact


def _import_file(store: Store, tmp: Path) -> dict[str, Any]:
    f = tmp / "qa.jsonl"
    f.write_text('{"input": "2+2?", "output": "4"}\n{"input": "3+3?", "output": "6"}\n{"input": "capital of France?", "output": "Paris"}\n')
    return {"path": str(f)}


def _import_folder(store: Store, tmp: Path) -> dict[str, Any]:
    folder = tmp / "hf-model"
    shutil.copytree(_model(store).path, folder, ignore=shutil.ignore_patterns("manifest.json"))
    gen = folder / "generation_config.json"  # different bytes: identical content would be the same artifact
    gen.write_text(gen.read_text().replace("{", '{"imported_for_test": true,', 1))
    return {"path": str(folder)}


def _gguf(store: Store) -> Artifact:
    return run_stage("export.gguf", {"model": _model(store)}, {"qtype": "f32"}, store=store).artifact


def _import_gguf(store: Store, tmp: Path) -> dict[str, Any]:
    f = tmp / "tiny.gguf"
    shutil.copyfile(_gguf(store).path / "model.gguf", f)
    return {"path": str(f), "source": "tests"}


def _adapter(store: Store) -> Artifact:
    return run_stage("finetune.lora", {"model": _model(store), "data": _synth(store)}, {"max_steps": 2, "batch_size": 4}, store=store).artifact


EXAMPLES: dict[str, Example] = {
    "data.synth": lambda s, t: ({}, {"task": "arithmetic", "n": 20}),
    "data.import": lambda s, t: ({}, _import_file(s, t)),
    "data.split": lambda s, t: ({"data": run_stage("data.import", {}, _import_file(s, t), store=s).artifact}, {"train": 0.34, "validation": 0.33, "test": 0.33}),
    "data.dedup": lambda s, t: ({"data": _synth(s)}, {}),
    "models.init": lambda s, t: ({"data": _synth(s)}, {"arch": "qwen2", "vocab_size": 400}),
    "models.import": lambda s, t: ({}, _import_folder(s, t)),
    "models.import_gguf": lambda s, t: ({}, _import_gguf(s, t)),
    "models.from_gguf": lambda s, t: ({"model": _gguf(s)}, {}),
    "models.shrink": lambda s, t: ({"model": _model(s), "data": _synth(s)}, {"num_layers": 1, "calibration_sequences": 2, "eval_sequences": 1, "sequence_length": 16}),
    "data.prose": lambda s, t: ({}, {"max_texts": 20}),
    "finetune.lora": lambda s, t: ({"model": _model(s), "data": _synth(s)}, {"max_steps": 2, "batch_size": 4}),
    "finetune.full": lambda s, t: ({"model": _model(s), "data": _synth(s)}, {"max_steps": 2, "batch_size": 4}),
    "adapters.merge": lambda s, t: ({"model": _model(s), "adapter": _adapter(s)}, {}),
    "export.gguf": lambda s, t: ({"model": _model(s)}, {"qtype": "f32"}),
    "export.onnx": lambda s, t: ({"model": _model(s)}, {"precision": "fp32"}),
    "eval": lambda s, t: ({"model": _model(s), "data": _synth(s)}, {"metrics": ["exact_match"], "limit": 2, "max_tokens": 4}),
    "bench": lambda s, t: ({"model": _model(s)}, {"prompt_tokens": [8], "output_tokens": [4], "repetitions": 1, "warmup": 0, "isolate": False}),
}

#: Stages whose inputs are expensive or stateful (a served request log, several trained runs); the named
#: tests run each of them through the runner twice and check registration, lineage and the cache hit.
COVERED_ELSEWHERE: dict[str, str] = {
    "finetune.dora": "tests/finetune/test_methods.py",
    "finetune.qlora": "tests/finetune/test_methods.py",
    "adapters.combine": "tests/finetune/test_adapters.py",
    "export.gguf_lora": "tests/export/test_gguf_lora.py",
    "export.ollama": "tests/export/test_gguf_ollama.py",
    "export.foundry": "tests/pipeline/test_quickstart.py",
    "parity": "tests/pipeline/test_quickstart.py",
    "optimize": "tests/export/test_gguf_parity_optimize.py",
    "distill.generate": "tests/pipeline/test_quickstart.py",
    "distill.train": "tests/pipeline/test_quickstart.py",
    "distill.report": "tests/pipeline/test_quickstart.py",
    "compare": "tests/pipeline/test_quickstart.py",
    "validate": "tests/evaluate/test_eval_validate.py",
    "data.from_logs": "tests/monitor/test_feedback.py",
    "monitor.drift": "tests/monitor/test_feedback.py",
    "monitor.sample": "tests/monitor/test_feedback.py",
}


def test_every_registered_stage_is_checked() -> None:
    registered = {n for n in all_stages() if not n.startswith("test.")}  # stages tests register for themselves
    unchecked = registered - set(EXAMPLES) - set(COVERED_ELSEWHERE)
    assert not unchecked, f"add a conformance example for: {sorted(unchecked)}"
    assert not (set(EXAMPLES) | set(COVERED_ELSEWHERE)) - registered, "an example names a stage that is no longer registered"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_stage_conformance(name: str, store: Store, tmp_path: Path) -> None:
    st = all_stages()[name]
    inputs, config = EXAMPLES[name](store, tmp_path)
    first = run_stage(name, inputs, config, store=store, output_name="conformance")
    assert not first.cached
    art = store.get(first.digest)
    m = art.manifest
    assert m.stage is not None and m.stage.name == name and m.stage.version == st.version and m.stage.cache_key
    assert m.kind in ("dataset", "model", "adapter", "onnx", "gguf", "report")
    assert m.stage.config == st.make_config(config).model_dump(mode="json"), "the resolved config is in the manifest"
    assert sorted(store.parents(art.digest)) == sorted((a.digest, role) for role, a in inputs.items())
    assert "conformance:1" in store.names_of(art.digest)
    art.verify()
    again = run_stage(name, inputs, config, store=store)
    assert again.cached and again.digest == first.digest
