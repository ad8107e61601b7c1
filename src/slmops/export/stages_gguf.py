"""Registers the GGUF stages: ``export.gguf``, ``export.gguf_lora`` and ``export.ollama``.

* ``export.gguf`` — a model (plus, optionally, a LoRA ``adapter`` and a ``data`` set to calibrate an
  importance matrix) → ``model.gguf`` of the asked ``qtype``. The adapter becomes ``adapter.gguf``,
  a GGUF LoRA applied at run time, or is merged into the weights first with ``merge_adapter``.
  ``gguf.json`` records which file is which.
* ``export.gguf_lora`` — an adapter and its base model → ``adapter.gguf`` alone (an ``adapter``
  artifact), for use with a base GGUF that already exists.
* ``export.ollama`` — a GGUF artifact → the same files plus a ``Modelfile`` (hard links, so no
  second copy of the weights).

Every stage writes only inside the runner's temp dir; intermediates (the f32 file a quantized
GGUF is made from) go to a temp dir beside it, so a failure never leaves a partial artifact.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from slmops.errors import ConfigError
from slmops.stage import StageContext, StageOutput, stage
from slmops.store.artifact import Artifact
from slmops.store.staging import scratch_dir

log = logging.getLogger(__name__)

MODEL_FILE, ADAPTER_FILE, SIDECAR, MODELFILE = "model.gguf", "adapter.gguf", "gguf.json", "Modelfile"


class GGUFConfig(BaseModel):
    """Config of ``export.gguf``."""

    model_config = ConfigDict(extra="forbid")

    qtype: str = Field("q4_k_m", description="GGUF type of the weights: a float type or a llama.cpp quantization (the names are gguf_quantize.QTYPES)")
    name: str | None = Field(None, description="general.name written into the file (default: architecture and digest)")
    merge_adapter: bool = Field(False, description="Merge the adapter into the weights instead of writing a separate GGUF LoRA")
    allow_other_base: bool = Field(False, description="Accept an adapter that was trained on a different base artifact")
    pre_tokenizer: str | None = Field(None, description="Force llama.cpp's pre-tokenizer name (default: detected from tokenizer.json)")
    drop_extra_tokens: bool = Field(False, description="Leave out tokenizer tokens that have no embedding row instead of failing")
    imatrix_texts: int = Field(64, ge=1, le=100_000, description="Texts of the data input used for the importance matrix")
    imatrix_tokens: int = Field(512, ge=16, le=32768, description="Tokens per text used for the importance matrix")

    @field_validator("qtype")
    @classmethod
    def _qtype(cls, v: str) -> str:
        from slmops.export.gguf_quantize import QTYPES

        if v.lower() not in QTYPES:
            raise ValueError(f"{v!r} is not a GGUF type; use one of {', '.join(QTYPES)}")
        return v.lower()


class GGUFLoraConfig(BaseModel):
    """Config of ``export.gguf_lora``."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="general.name of the adapter file (default: the adapter's digest)")
    allow_other_base: bool = Field(False, description="Accept an adapter that was trained on a different base artifact")


class OllamaConfig(BaseModel):
    """Config of ``export.ollama``."""

    model_config = ConfigDict(extra="forbid")

    system: str | None = Field(None, description="Default system prompt (SYSTEM line)")
    num_ctx: int | None = Field(None, ge=16, description="Context window Ollama should allocate (PARAMETER num_ctx)")
    parameters: dict[str, float | int | str] = Field(default_factory=dict, description="Extra PARAMETER lines, e.g. {'temperature': 0.7}")


def adapter_folder(art: Artifact) -> Path:
    """The folder of an adapter artifact holding ``adapter_config.json`` (its root, or its single sub-folder that has one)."""
    if art.kind != "adapter":
        raise ConfigError(f"artifact {art.short} is a {art.kind}, not an adapter", fix="pass --adapter an adapter artifact (made by a LoRA fine-tune)")
    if (art.path / "adapter_config.json").is_file():
        return art.path
    found = sorted(p.parent for p in art.path.glob("*/adapter_config.json"))
    if len(found) == 1:
        return found[0]
    raise ConfigError(f"adapter {art.short} has {'no' if not found else 'several'} adapter_config.json", fix="pass an adapter artifact holding one PEFT adapter")


def _check_model(art: Artifact) -> None:
    if art.kind != "model":
        raise ConfigError(f"artifact {art.short} is a {art.kind}, not a model", fix="export.gguf takes a Hugging Face model (models.init, models.import or a fine-tune)")


def _check_base(adapter: Artifact, model: Artifact, allow_other_base: bool) -> None:
    trained_on = [p.digest for p in adapter.manifest.parents if p.role == "model"]
    if trained_on and model.digest not in trained_on and not allow_other_base:
        raise ConfigError(
            f"adapter sha256:{adapter.short} was trained on sha256:{trained_on[0][:12]}, not on sha256:{model.short}",
            why="an adapter only makes sense on the weights it was trained against",
            fix="pass the base it was trained on, or --allow-other-base if the bases share an architecture on purpose",
        )


def _merged_source(model: Artifact, adapter: Artifact) -> Any:
    from slmops._optional import require
    from slmops.export.gguf_convert import MappingSource
    from slmops.models.gguf_lora import _adapter_tensors, read_adapter_config
    from slmops.models.loading import load_model_and_tokenizer

    folder = adapter_folder(adapter)
    read_adapter_config(folder)
    _adapter_tensors(folder)  # refuses pickled or damaged weights before PEFT reads them
    peft = require("peft", extra="train", purpose="merging an adapter")
    base, _ = load_model_and_tokenizer(model)
    merged = peft.PeftModel.from_pretrained(base, str(folder), is_trainable=False).merge_and_unload()
    return MappingSource(merged.state_dict())


def _write_sidecar(out: Path, **data: Any) -> None:
    (out / SIDECAR).write_text(json.dumps({"model": MODEL_FILE, **data}, indent=2, sort_keys=True) + "\n")


@stage("export.gguf", config=GGUFConfig, kind="gguf", format="gguf", inputs=("model",), optional_inputs=("adapter", "data"))
def export_gguf(inputs: dict[str, Artifact], cfg: GGUFConfig, ctx: StageContext) -> StageOutput:
    """Convert a model (and optionally its LoRA adapter) to GGUF, quantized by llama.cpp."""
    from slmops.export.gguf_convert import convert_to_gguf
    from slmops.export.gguf_quantize import compute_imatrix, quant_summary, quantize_gguf
    from slmops.models.gguf_lora import convert_lora

    model, adapter, data = inputs["model"], inputs.get("adapter"), inputs.get("data")
    _check_model(model)
    if adapter is not None:
        _check_base(adapter, model, cfg.allow_other_base)
    source = _merged_source(model, adapter) if adapter is not None and cfg.merge_adapter else None
    name = cfg.name or f"{model.manifest.meta.get('arch') or 'model'}-{model.short}"
    meta: dict[str, Any] = {"qtype": cfg.qtype, "model": model.digest}
    direct = cfg.qtype in ("f32", "f16")
    with scratch_dir(ctx.out, "gguf-") as tmp:  # owned, so `models gc` leaves it alone while the export runs
        first = ctx.out / MODEL_FILE if direct else Path(tmp) / "model.f32.gguf"
        meta.update(convert_to_gguf(model.path, first, outtype=cfg.qtype if direct else "f32", name=name, source=source,
                                    pre_tokenizer=cfg.pre_tokenizer, drop_extra_tokens=cfg.drop_extra_tokens))
        if not direct:
            imatrix = None
            if data is not None:
                from slmops.models.init import dataset_texts

                imatrix, meta["imatrix"] = compute_imatrix(model.path, dataset_texts(data), max_texts=cfg.imatrix_texts, max_tokens=cfg.imatrix_tokens)
            meta.update(quantize_gguf(first, ctx.out / MODEL_FILE, cfg.qtype, imatrix=imatrix))
        else:
            meta.update(quant_summary(first, cfg.qtype))
    adapters = []
    if adapter is not None and not cfg.merge_adapter:
        meta["adapter"] = convert_lora(adapter_folder(adapter), model.path, ctx.out / ADAPTER_FILE, name=f"adapter-{adapter.short}")
        adapters.append({"file": ADAPTER_FILE, "scale": 1.0, "name": f"adapter-{adapter.short}"})
    elif adapter is not None:
        meta["merged_adapter"] = adapter.digest
    _write_sidecar(ctx.out, qtype=cfg.qtype, adapters=adapters, arch=meta["arch"])
    size = (ctx.out / MODEL_FILE).stat().st_size
    meta["file_bytes"] = size
    params = int(meta.get("parameters") or 0)
    metrics = {"size_bytes": size, "parameters": params, "bits_per_weight": round(size * 8 / params, 3) if params else None}
    return StageOutput(metrics=metrics, meta=meta)


@stage("export.gguf_lora", config=GGUFLoraConfig, kind="adapter", format="gguf-lora", inputs=("adapter", "model"))
def export_gguf_lora(inputs: dict[str, Artifact], cfg: GGUFLoraConfig, ctx: StageContext) -> StageOutput:
    """Convert a PEFT LoRA adapter to a GGUF LoRA for its base model (applied by llama.cpp at run time)."""
    from slmops.models.gguf_lora import convert_lora

    adapter, model = inputs["adapter"], inputs["model"]
    _check_model(model)
    _check_base(adapter, model, cfg.allow_other_base)
    facts = convert_lora(adapter_folder(adapter), model.path, ctx.out / ADAPTER_FILE, name=cfg.name or f"adapter-{adapter.short}")
    return StageOutput(metrics={"size_bytes": facts["file_bytes"], "modules": facts["modules"]}, meta=facts)


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@stage("export.ollama", config=OllamaConfig, kind="gguf", format="gguf", inputs=("model",))
def export_ollama(inputs: dict[str, Artifact], cfg: OllamaConfig, ctx: StageContext) -> StageOutput:
    """Package a GGUF artifact for Ollama: its files plus a Modelfile (TEMPLATE, stops, ADAPTER lines)."""
    from slmops.export.ollama import gguf_tokenizer_facts, go_template, modelfile, probe_template

    src = inputs["model"]
    if src.kind != "gguf" or not (src.path / MODEL_FILE).is_file():
        raise ConfigError(f"artifact {src.short} is a {src.kind}, not a GGUF export", fix="run export.gguf first (slmops export ollama does it for you)")
    side = json.loads((src.path / SIDECAR).read_text()) if (src.path / SIDECAR).is_file() else {"model": MODEL_FILE, "adapters": []}
    files = [MODEL_FILE] + [a["file"] for a in side.get("adapters", [])]
    for f in [*files, SIDECAR]:
        if (src.path / f).is_file():
            _link(src.file(f), ctx.out / f)
    facts = gguf_tokenizer_facts(ctx.out / MODEL_FILE)
    template, warning = None, None
    if facts["chat_template"]:
        probed = probe_template(facts["chat_template"], bos_token=facts["bos_token"], eos_token=facts["eos_token"])
        if probed is None:
            warning = "the chat template could not be turned into an Ollama TEMPLATE; Ollama will use the template it detects in the GGUF"
        else:
            template = go_template(probed, bos_token=facts["bos_token"], add_bos=facts["add_bos"])
    else:
        warning = "the model has no chat template; the Modelfile has no TEMPLATE"
    params = dict(cfg.parameters)
    if cfg.num_ctx:
        params["num_ctx"] = cfg.num_ctx
    text = modelfile(model_file=MODEL_FILE, adapters=files[1:], template=template, stops=facts["stops"], system=cfg.system, parameters=params)
    (ctx.out / MODELFILE).write_text(text, encoding="utf-8")
    if warning:
        log.warning("export.ollama: %s", warning)
    meta = {"source": src.digest, "stops": facts["stops"], "template": template is not None, "warning": warning, "qtype": side.get("qtype"), "adapters": files[1:]}
    return StageOutput(metrics={"size_bytes": (ctx.out / MODEL_FILE).stat().st_size}, meta=meta)
