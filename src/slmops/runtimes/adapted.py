"""An adapter artifact opened as a model: its recorded base with the adapter applied at load time.

``eval``, ``bench``, ``compare`` and ``parity`` accept a LoRA/DoRA ``adapter`` artifact wherever
they accept a model. :func:`open_adapter` opens the base the adapter was trained on (its ``model``
parent) and applies the adapter in memory — nothing merged is written to disk:

* on ``torch`` (the default) PEFT folds ``B·A·scale`` into the loaded weights (``merge_and_unload``),
  so scoring and generation run at the base model's speed and are exactly the merged model's;
* on ``llamacpp`` the adapter goes, converted to a GGUF LoRA on load, onto a plain GGUF export
  of the same base found in the store (``slmops export gguf BASE``), applied to every request.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from slmops._optional import require
from slmops.errors import ConfigError
from slmops.store.artifact import Artifact, read_manifest

log = logging.getLogger(__name__)


def peft_folder(adapter: Artifact) -> Path:
    """The folder of an adapter artifact holding ``adapter_config.json`` (its root, or its single sub-folder that has one)."""
    if (adapter.path / "adapter_config.json").is_file():
        return adapter.path
    found = sorted(p.parent for p in adapter.path.glob("*/adapter_config.json"))
    if len(found) == 1:
        return found[0]
    if adapter.manifest.format == "gguf-lora" or (adapter.path / "adapter.gguf").is_file():
        raise ConfigError(f"sha256:{adapter.short} is a GGUF LoRA, which only llama.cpp applies",
                          fix="evaluate the PEFT adapter it was converted from, or the GGUF export made with --adapter")
    raise ConfigError(f"adapter sha256:{adapter.short} has {'no' if not found else 'several'} adapter_config.json",
                      fix="pass an adapter artifact holding one PEFT adapter")


def adapter_base(adapter: Artifact) -> Artifact:
    """The model an adapter was trained on (its ``model`` parent), read from the same store."""
    parents = [p.digest for p in adapter.manifest.parents if p.role == "model"]
    if not parents:
        raise ConfigError(f"adapter sha256:{adapter.short} has no recorded base model (no 'model' parent)",
                          fix="merge it onto its base first (slmops adapters merge BASE ADAPTER) and evaluate the merged model")
    path = adapter.path.parent / parents[0]
    if not (path / "manifest.json").is_file():
        raise ConfigError(f"the base model sha256:{parents[0][:12]} of adapter sha256:{adapter.short} is not in the store",
                          fix="pull or re-import the base model")
    return Artifact(path, read_manifest(path))


def plain_gguf_export(base: Artifact) -> Artifact:
    """A GGUF export of ``base`` that carries no adapter of its own (the smallest one), from the same store."""
    from slmops.store.registry import Store

    with Store(base.path.parent.parent) as store:
        found = []
        for digest, role in store.children(base.digest):
            if role != "model":
                continue
            art = store.get(digest)
            if art.kind == "gguf" and not any(p.role == "adapter" for p in art.manifest.parents):
                found.append(art)
    if not found:
        raise ConfigError(f"no GGUF export of the base sha256:{base.short} to put the adapter on",
                          fix=f"export one first: slmops export gguf sha256:{base.short} --qtype q8_0")
    return min(found, key=lambda a: a.manifest.size_bytes or 0)


def open_adapter(adapter: Artifact, runtime: str = "auto", **options: Any) -> Any:
    """Open ``adapter``'s base with the adapter applied (see the module docstring); ``runtime``: auto/torch or llamacpp."""
    base = adapter_base(adapter)
    folder = peft_folder(adapter)
    if runtime in ("auto", "torch"):
        from slmops.runtimes.torch_rt import TorchRuntime

        peft = require("peft", extra="train", purpose="applying an adapter")
        rt = TorchRuntime.from_path(base.path, **options)
        try:
            with rt._lock:
                rt.model = peft.PeftModel.from_pretrained(rt.model, str(folder), is_trainable=False).merge_and_unload()
                rt.model.eval()
        except BaseException:
            rt.close()
            raise
        rt.info.extra["adapter"] = adapter.digest
        return rt
    if runtime == "llamacpp":
        from slmops.runtimes.llamacpp_rt import LlamaCppRuntime

        gguf = plain_gguf_export(base)
        log.info("adapter sha256:%s on the GGUF export sha256:%s of its base", adapter.short, gguf.short)
        return LlamaCppRuntime.from_path(gguf.path, adapters=[folder], **options)
    raise ConfigError(f"the {runtime} runtime cannot apply an adapter artifact at run time",
                      fix="use --runtime torch (the default) or llamacpp, or evaluate an ONNX export made with --adapter")
