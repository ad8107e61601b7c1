"""``export.foundry``: Foundry Local bring-your-own-model packages, checked in Foundry Local's own runtime.

The package layout and ``inference_model.json`` (prompt templates derived from the chat template)
are checked directly; then the package is registered, loaded and chatted with offline by the
``foundry-local-sdk`` wheel (Foundry Local's native runtime) in its own virtual environment —
it pins onnxruntime 1.31, which does not co-install with ours — and its greedy reply must equal
slmops' ort-genai runtime's, token count of the prompt included (so the BOS handling agrees).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
FOUNDRY_VENV = REPO / ".venv-foundry"


@pytest.fixture(scope="module")
def fstore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from slmops.store.registry import Store

    s = Store(tmp_path_factory.mktemp("foundry_store"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def packages(fstore: Any) -> dict[str, tuple[Any, Any]]:
    """arch -> (onnx export, foundry package) for llama (phi chat style, BOS) and qwen2 (chatml, no BOS)."""
    from slmops.stage.runner import run_stage
    from slmops.testing.onnx import tiny_onnx

    out = {}
    for arch in ("llama", "qwen2"):
        onnx = tiny_onnx(arch, store=fstore, precision="int4", parity_texts=0)
        out[arch] = (onnx, run_stage("export.foundry", {"onnx": onnx}, {"version": 2}, store=fstore).artifact)
    return out


@pytest.fixture(scope="session")
def foundry_python() -> str:
    """A Python with foundry-local-sdk: $SLMOPS_FOUNDRY_PYTHON, or .venv-foundry (created here the first time)."""
    if os.environ.get("SLMOPS_FOUNDRY_PYTHON"):
        return os.environ["SLMOPS_FOUNDRY_PYTHON"]
    exe = FOUNDRY_VENV / "bin" / "python"
    probe = [str(exe), "-c", "import foundry_local_sdk"]
    if not exe.is_file() or subprocess.run(probe, capture_output=True, check=False).returncode != 0:
        steps = [[sys.executable, "-m", "venv", str(FOUNDRY_VENV)], [str(exe), "-m", "pip", "install", "-q", "foundry-local-sdk"]]
        for cmd in steps:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
            if res.returncode != 0:
                pytest.skip(f"cannot install foundry-local-sdk into {FOUNDRY_VENV} (no package index reachable?): "
                            f"{(res.stderr or res.stdout).strip().splitlines()[-1:]}")
    return str(exe)


def test_package_layout_and_inference_model(packages: dict[str, tuple[Any, Any]]) -> None:
    from slmops.export.foundry import find_model_dir

    onnx, pkg = packages["llama"]
    m = pkg.manifest
    assert (m.kind, m.format) == ("onnx", "foundry-local") and [(p.digest, p.role) for p in m.parents] == [(onnx.digest, "onnx")]
    model_id = m.meta["model_id"]
    assert model_id == f"slmops-llama-int4-{onnx.digest[:8]}:2"
    folder = find_model_dir(pkg.path)
    assert folder.relative_to(pkg.path).as_posix() == f"slmops/slmops-llama-int4-{onnx.digest[:8]}-2"  # <cache>/<publisher>/<name>-<version>
    for name in ("genai_config.json", "model.onnx", "model.onnx.data", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (folder / name).read_bytes() == (onnx.path / name).read_bytes()
    inference = json.loads((folder / "inference_model.json").read_text())
    assert inference["Name"] == model_id
    assert inference["PromptTemplate"] == {
        "system": "<|system|>\n{Content}<|end|>\n",
        "user": "<|user|>\n{Content}<|end|>\n",
        "assistant": "<|assistant|>\n{Content}<|end|>\n",
        "prompt": "<s><|user|>\n{Content}<|end|>\n<|assistant|>\n",
    }
    assert "register_model" in (pkg.path / "README.md").read_text()
    qwen = json.loads((find_model_dir(packages["qwen2"][1].path) / "inference_model.json").read_text())["PromptTemplate"]
    assert qwen["prompt"] == "<|im_start|>user\n{Content}<|im_end|>\n<|im_start|>assistant\n"


def test_package_runs_on_ort_genai_runtime(packages: dict[str, tuple[Any, Any]]) -> None:
    from slmops.runtimes import GenerationParams, open_runtime

    onnx, pkg = packages["qwen2"]
    with open_runtime(pkg) as a, open_runtime(onnx) as b:
        assert a.name == "ort-genai"
        params = GenerationParams(max_tokens=8)
        assert a.generate("Hello", params).token_ids == b.generate("Hello", params).token_ids


def test_package_refuses_what_foundry_cannot_run(fstore: Any, packages: dict[str, tuple[Any, Any]]) -> None:
    from slmops.errors import ConfigError
    from slmops.stage.runner import run_stage
    from slmops.testing.onnx import tiny_lora

    onnx, pkg = packages["llama"]
    with pytest.raises(ConfigError, match="not an ONNX GenAI export"):
        run_stage("export.foundry", {"onnx": pkg}, {}, store=fstore)
    with fstore.staging() as tmp:  # an export without a chat template
        for f in onnx.path.iterdir():
            if f.name not in ("manifest.json", "chat_template.jinja"):
                shutil.copy2(f, tmp / f.name)
        tcfg = json.loads((tmp / "tokenizer_config.json").read_text())
        tcfg.pop("chat_template")
        (tmp / "tokenizer_config.json").write_text(json.dumps(tcfg))
        plain = fstore.commit(tmp, kind="onnx", format="ort-genai", meta=onnx.manifest.meta)
    with pytest.raises(ConfigError, match="no chat template"):
        run_stage("export.foundry", {"onnx": plain}, {}, store=fstore)
    model = next(fstore.get(p.digest) for p in onnx.manifest.parents if p.role == "model")
    adapter = tiny_lora(model, store=fstore)
    lora = run_stage("export.onnx", {"model": model, "adapter": adapter}, {"precision": "fp32", "adapter_mode": "runtime", "parity_texts": 0},
                     store=fstore).artifact
    with pytest.raises(ConfigError, match="cannot switch LoRA adapters") as exc:
        run_stage("export.foundry", {"onnx": lora}, {}, store=fstore)
    assert "--adapter-mode merge" in exc.value.message


def test_foundry_local_runs_the_package(packages: dict[str, tuple[Any, Any]], foundry_python: str) -> None:
    from slmops.export.foundry_check import verify_package

    for arch in ("llama", "qwen2"):
        _, pkg = packages[arch]
        check = verify_package(pkg.path, python=foundry_python, prompt="Tell me about foxes.", max_tokens=12)
        assert check["model_id"] == pkg.manifest.meta["model_id"]
        assert check["foundry"]["usage"]["completion_tokens"] > 0
        assert check["text_match"], (check["foundry_text"], check["slmops_text"])
        assert check["prompt_tokens_match"], check


def test_cli_export_foundry(cli: Any, foundry_python: str, tmp_path: Path) -> None:
    assert cli("models", "init", "--name", "tiny", "--arch", "llama").code == 0
    out_dir = tmp_path / "pkg"
    res = cli("export", "foundry", "tiny", "--precision", "int8", "--model-name", "my-tiny", "--verify", "--foundry-python", foundry_python,
              "--name", "tiny-foundry", "--out", str(out_dir), "--json")
    assert res.code == 0, res.err
    d = res.json
    assert d["format"] == "foundry-local" and d["meta"]["model_id"] == "my-tiny:1" and d["verify"]["text_match"]
    assert (out_dir / "slmops" / "my-tiny-1" / "inference_model.json").is_file()
    bad = cli("export", "foundry", "tiny", "--adapter", "tiny")
    assert bad.code == 1
