"""LoRA adapters on the way to ONNX: merged into the weights first, or exported as switchable ORT GenAI adapters.

* ``merge`` — :func:`merge_adapter` loads the base with PEFT, merges the adapter
  (``merge_and_unload``) and saves a plain Hugging Face folder the builder then exports. Works for
  LoRA, DoRA and QLoRA adapters (a QLoRA adapter merges into the full-precision base).
* ``runtime`` — the builder is given the adapter (``adapter_path``) and adds a LoRA branch
  (``x·A·B`` + the base MatMul) to every adapted projection; :func:`lora_node_exclusions` keeps
  those branches out of int4/int8 quantization, and :func:`expose_lora_inputs` turns their
  weights into graph inputs whose defaults are zeros (the base model) and returns the adapter's
  values, which :func:`slmops.runtimes.ortgenai_adapters.write_adapter` stores as an
  ``.onnx_adapter`` that ORT GenAI activates per generator.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from slmops._optional import require
from slmops.errors import ConfigError
from slmops.runtimes.ortgenai_adapters import LORA_INPUT
from slmops.store.artifact import Artifact, contained

log = logging.getLogger(__name__)

#: files copied from the base folder next to merged weights.
_SIDE_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
               "generation_config.json", "added_tokens.json", "vocab.json", "merges.txt")
_PROJECTIONS = (("attn", ("q_proj", "k_proj", "v_proj", "o_proj")), ("mlp", ("gate_proj", "up_proj", "down_proj")))


def check_adapter_input(model: Artifact, adapter: Artifact) -> Path:
    """The adapter's folder, after checking it is a PEFT adapter made for ``model`` (when its lineage says)."""
    if adapter.kind != "adapter":
        raise ConfigError(f"artifact {adapter.short} is a {adapter.kind}, not an adapter", fix="pass --adapter a LoRA adapter artifact")
    if not (adapter.path / "adapter_config.json").is_file():
        raise ConfigError(f"adapter {adapter.short} has no adapter_config.json", why=f"its format is {adapter.manifest.format}, not peft",
                          fix="pass an adapter made by finetune.lora/dora/qlora")
    bases = [p.digest for p in adapter.manifest.parents if p.role == "model"]
    if bases and model.digest not in bases:
        raise ConfigError(
            f"adapter {adapter.short} was trained on another base model (sha256:{bases[0][:12]}), not {model.short}",
            fix="export the model the adapter was trained on",
        )
    return adapter.path


def merge_adapter(model_dir: Path, adapter_dir: Path, out: Path) -> Path:
    """Write ``model_dir`` with ``adapter_dir`` merged into its weights as a Hugging Face folder ``out``."""
    peft = require("peft", extra="train", purpose="merging an adapter before export")
    torch = require("torch", extra="train", purpose="merging an adapter before export")
    from slmops.models.loading import load_model_and_tokenizer, quiet_progress

    model, _ = load_model_and_tokenizer(model_dir, dtype="float32")
    with torch.inference_mode(), quiet_progress():
        merged = peft.PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False).merge_and_unload()
        out.mkdir(parents=True, exist_ok=True)
        merged.save_pretrained(str(out), safe_serialization=True)
    for name in _SIDE_FILES:
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, out / name)
    return out


def lora_node_exclusions(num_layers: int) -> list[str]:
    """Builder node names of every possible LoRA branch MatMul (kept in float by int4/int8 quantization)."""
    return [f"/model/layers.{i}/{group}/{proj}/lora_{ab}/MatMul" for i in range(num_layers) for group, projs in _PROJECTIONS
            for proj in projs for ab in "AB"]


def expose_lora_inputs(onnx_dir: Path) -> dict[str, np.ndarray]:
    """Make the LoRA weights of ``onnx_dir/model.onnx`` graph inputs with zero defaults; return their values.

    The weights stay where the builder put them (inline or in ``model.onnx.data``), overwritten with
    zeros; each becomes an input of shape ``[in, lora_rank]`` / ``[lora_rank, out]`` so adapters of
    any rank fit. Refuses a graph whose LoRA branches were quantized.
    """
    onnx = require("onnx", extra="onnx", purpose="exporting a run-time adapter")
    from onnx import helper, numpy_helper

    path = onnx_dir / "model.onnx"
    model = onnx.load(str(path), load_external_data=False)
    quantized = [n.name for n in model.graph.node if "/lora_" in n.name and n.op_type != "MatMul" and "MatMul" in n.op_type]
    if quantized:
        raise ConfigError("the model builder quantized the LoRA branches", why=f"e.g. {quantized[0]}",
                          fix="export with --adapter-mode merge, or at fp32/fp16")
    values: dict[str, np.ndarray] = {}
    for init in model.graph.initializer:
        if not LORA_INPUT.search(init.name):
            continue
        arr = numpy_helper.to_array(init, base_dir=str(onnx_dir))
        values[init.name] = np.array(arr)
        _zero(init, onnx_dir, arr)
        dims: list[Any] = [arr.shape[0], "lora_rank"] if ".lora_A." in init.name else ["lora_rank", arr.shape[1]]
        model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, dims))
    if not values:
        raise ConfigError("the exported graph has no LoRA branches", why="the builder did not apply the adapter",
                          fix="check the adapter targets attention/MLP projections, or export with --adapter-mode merge")
    onnx.save(model, str(path))
    log.info("export.onnx: %d LoRA weights are run-time inputs now", len(values))
    return values


def _zero(init: Any, onnx_dir: Path, arr: np.ndarray) -> None:
    """Overwrite an initializer's data with zeros, in its external file when it has one."""
    from onnx import numpy_helper

    ext = {e.key: e.value for e in init.external_data}
    if "location" in ext:
        offset, length = int(ext.get("offset", 0)), int(ext.get("length", arr.nbytes))
        with open(contained(onnx_dir, ext["location"]), "r+b") as f:
            f.seek(offset)
            f.write(b"\0" * length)
    else:
        init.CopyFrom(numpy_helper.from_array(np.zeros_like(arr), init.name))
