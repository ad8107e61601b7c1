"""Preparing a model for each method: full (all weights), LoRA, DoRA, QLoRA (4-bit base + LoRA).

Target modules default per architecture to every projection of attention and MLP (what QLoRA and
most recipes found best): ``q/k/v/o_proj`` + ``gate/up/down_proj`` for Llama-style models, and the
fused ``qkv_proj``/``gate_up_proj`` of Phi-3. Unknown architectures fall back to PEFT's
``all-linear``. Names are checked against the model before any weight is loaded (on the meta
device), so a typo fails in a second with the list of layers that do exist.

QLoRA loads the frozen base through bitsandbytes (``Linear4bit``, NF4 or FP4, optional double
quantization) and trains fp32 LoRA matrices on top; the saved adapter is a plain LoRA adapter,
so it also loads on the fp32 base.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from slmops._optional import require
from slmops.errors import ConfigError
from slmops.finetune.config import LoraConfig, QloraConfig, TrainConfig, flag
from slmops.models.loading import model_folder, quiet_progress
from slmops.store.artifact import Artifact

log = logging.getLogger(__name__)

_LLAMA_STYLE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
#: model_type -> default LoRA target modules (attention + MLP projections).
DEFAULT_TARGETS: dict[str, list[str]] = {
    **{t: _LLAMA_STYLE for t in ("llama", "qwen2", "qwen3", "mistral", "mixtral", "gemma", "gemma2", "gemma3_text", "olmo2", "smollm3", "granite")},
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}
_NEVER_TARGET = ("lm_head",)


@dataclass
class Prepared:
    """A model ready to train, and facts about it for the manifest."""

    model: Any
    facts: dict[str, Any] = field(default_factory=dict)


def read_config(artifact: Artifact) -> dict[str, Any]:
    return json.loads((model_folder(artifact) / "config.json").read_text())


def context_length(artifact: Artifact) -> int | None:
    cfg = read_config(artifact)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(cfg.get(key), int):
            return int(cfg[key])
    return None


def skeleton(artifact: Artifact) -> Any:
    """The model built on the meta device: module names and shapes, no memory, no weights read."""
    tf = require("transformers", extra="train", purpose="fine-tuning")
    accelerate = require("accelerate", extra="train", purpose="fine-tuning")
    config = tf.AutoConfig.from_pretrained(str(model_folder(artifact)), trust_remote_code=False, local_files_only=True)
    with accelerate.init_empty_weights():
        return tf.AutoModelForCausalLM.from_config(config, trust_remote_code=False)


def linear_layers(model: Any) -> list[str]:
    """Leaf names of the linear layers LoRA can adapt (lm_head excluded), sorted."""
    torch = require("torch", extra="train")
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n}
    return sorted(names - set(_NEVER_TARGET))


def resolve_targets(model: Any, cfg: LoraConfig) -> list[str] | str:
    """The target modules to give PEFT: the architecture's default, ``all-linear``, or checked names."""
    available = linear_layers(model)
    model_type = getattr(model.config, "model_type", "")
    if cfg.target_modules == ["all-linear"]:
        return "all-linear"
    if cfg.target_modules == ["auto"]:
        default = [t for t in DEFAULT_TARGETS.get(model_type, []) if t in available]
        return default or "all-linear"
    for name in cfg.target_modules:
        leaf = name.rsplit(".", 1)[-1]
        if leaf not in available or not any(n == name or n.endswith("." + name) for n, _ in model.named_modules()):
            raise ConfigError(
                f"{flag('target_modules')} {name} matches no linear layer of this {model_type or 'model'}",
                why=f"its linear layers are {', '.join(available)}",
                fix="use some of those, or auto / all-linear",
            )
    return list(cfg.target_modules)


def check_modules_to_save(model: Any, names: list[str]) -> None:
    have = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n}
    for name in names:
        if name.rsplit(".", 1)[-1] not in have:
            top = sorted({n.split(".")[-1] for n, m in model.named_modules() if n and not list(m.children())} & {"lm_head", "embed_tokens", "norm", "wte"})
            raise ConfigError(
                f"{flag('modules_to_save')} {name} matches no module of this {getattr(model.config, 'model_type', 'model')}",
                why=f"candidates are {', '.join(top) or 'lm_head'}",
                fix="name a module that exists, e.g. lm_head",
            )


def check_method_config(artifact: Artifact, method: str, cfg: TrainConfig) -> list[str] | str | None:
    """Fail fast on settings that do not fit the model (before data and weights load)."""
    if method == "full":
        return None
    assert isinstance(cfg, LoraConfig)
    meta = skeleton(artifact)
    targets = resolve_targets(meta, cfg)
    check_modules_to_save(meta, cfg.modules_to_save)
    if method == "qlora":
        require("bitsandbytes", extra="train", purpose="QLoRA (4-bit base)")
    return targets


def _quantized_numel(p: Any) -> int:
    qs = getattr(p, "quant_state", None)
    return int(qs.shape.numel()) if qs is not None and hasattr(qs, "shape") else p.numel()


def count(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters; tied weights once, 4-bit weights at their unpacked size."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = _quantized_numel(p)
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def load_base(artifact: Artifact, method: str, cfg: TrainConfig, *, device: Any) -> Any:
    torch = require("torch", extra="train", purpose="fine-tuning")
    tf = require("transformers", extra="train", purpose="fine-tuning")
    kw: dict[str, Any] = {"trust_remote_code": False, "use_safetensors": True, "local_files_only": True}
    if method == "qlora":
        assert isinstance(cfg, QloraConfig)
        require("bitsandbytes", extra="train", purpose="QLoRA (4-bit base)")
        kw["quantization_config"] = tf.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=cfg.quant_type,
            bnb_4bit_use_double_quant=cfg.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, cfg.compute_dtype),
        )
        kw["device_map"] = {"": str(device)}
        kw["dtype"] = torch.float32
    else:
        kw["dtype"] = torch.float32
    with quiet_progress():
        model = tf.AutoModelForCausalLM.from_pretrained(str(model_folder(artifact)), **kw)
    model.config.use_cache = False
    if method == "qlora":
        keep_4bit_trainable(model)
    return model


def keep_4bit_trainable(model: Any) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference during evaluation.

    On CPUs with AVX512-BF16, ``Linear4bit`` converts its weight to an inference-only layout the
    first time it runs in eval mode without grad, and never converts back: later training steps
    then take a path with no autograd support (and fail on layers with a bias). Validation runs
    in eval mode between training steps, so the conversion is switched off.
    """
    bnb = require("bitsandbytes", extra="train", purpose="QLoRA (4-bit base)")
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False
    release_checkpoint_pages(model, keep=bnb.nn.Params4bit)


def release_checkpoint_pages(model: Any, *, keep: type) -> None:
    """Copy the tensors that still point into the memory-mapped checkpoint, so the mapping closes.

    After a 4-bit load, the embeddings, norms and head are views of the mmapped safetensors file,
    which keeps every page the quantizer touched resident: the process holds the whole fp32 file
    and QLoRA saves no memory. Copying those few small tensors (``keep`` = the 4-bit parameter
    type, already in its own memory) lets the file go.
    """
    import gc

    for m in model.modules():
        for name, p in list(m.named_parameters(recurse=False)):
            if not isinstance(p, keep):
                p.data = p.data.clone()
        for name, b in list(m.named_buffers(recurse=False)):
            if b is not None:
                m._buffers[name] = b.clone()
    gc.collect()


def set_checkpointing(model: Any, on: bool) -> None:
    """Turn activation (gradient) checkpointing on (non-reentrant) or off, under its transformers 5 name when present."""
    kwargs = {"use_reentrant": False}
    if on:
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
        disable()


def prepare(artifact: Artifact, method: str, cfg: TrainConfig, *, device: Any, targets: list[str] | str | None) -> Prepared:
    """Load ``artifact`` and make it trainable for ``method`` (call after seeding: LoRA init draws)."""
    peft = require("peft", extra="train", purpose="LoRA/DoRA/QLoRA fine-tuning") if method != "full" else None
    model = load_base(artifact, method, cfg, device=device)
    gc_kwargs = {"use_reentrant": False}
    facts: dict[str, Any] = {"method": method, "model_type": getattr(model.config, "model_type", None)}
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        if cfg.gradient_checkpointing:
            set_checkpointing(model, True)
    else:
        assert isinstance(cfg, LoraConfig) and peft is not None
        if method == "qlora":
            model = peft.prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=cfg.gradient_checkpointing, gradient_checkpointing_kwargs=gc_kwargs
            )
            facts["quantization"] = {"bits": 4, "quant_type": cfg.quant_type, "double_quant": cfg.double_quant, "compute_dtype": cfg.compute_dtype}
        elif cfg.gradient_checkpointing:
            set_checkpointing(model, True)
        alpha = cfg.lora_alpha if cfg.lora_alpha is not None else 2 * cfg.lora_rank
        lcfg = peft.LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=int(alpha) if float(alpha).is_integer() else alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=targets,
            modules_to_save=list(cfg.modules_to_save) or None,
            use_dora=method == "dora",
            bias="none",
            task_type="CAUSAL_LM",
        )
        model = peft.get_peft_model(model, lcfg)
        facts["target_modules"] = sorted(model.peft_config["default"].target_modules)
        facts["adapter_name"] = cfg.adapter_name
    if method != "qlora":  # a 4-bit model is placed by device_map at load time
        model.to(device)
    trainable, total = count(model)
    facts.update(trainable_params=trainable, total_params=total, trainable_pct=round(100.0 * trainable / max(total, 1), 4))
    log.info("%s: %d of %d parameters trainable (%.3f%%)", method, trainable, total, facts["trainable_pct"])
    return Prepared(model, facts)
