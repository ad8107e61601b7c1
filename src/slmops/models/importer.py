"""Importing Hugging Face model folders into the store (safely), and downloading them from the hub.

An import copies only known file types (configs, safetensors weights, tokenizer files, chat
templates); code (``*.py``) is never copied and ``auto_map`` (remote code) is refused, because
slmops never enables ``trust_remote_code``. Pickled weights (``pytorch_model.bin`` …) are refused
unless the user opts in with ``allow_pickle``, and then converted so the store holds safetensors
only. The stage's fingerprint hashes the source files, so editing the folder misses the cache.

``hf:org/name`` references go through :func:`hub_download` — the only networked call in slmops —
which fails fast with :class:`~slmops.errors.OfflineError` when the hub cannot be reached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator

from slmops._optional import require
from slmops.errors import ConfigError, OfflineError, RefError, StoreError, UnsafeInput
from slmops.models.weights import (
    PICKLE_SUFFIXES,
    PICKLE_WEIGHTS,
    convert_pickle_weights,
    safetensors_files,
    validate_safetensors,
    weights_summary,
)
from slmops.settings import hub_offline, slmops_home
from slmops.store.artifact import Artifact, contained, file_digest


def absolute_path(v: str) -> str:
    """A config's ``path`` field made absolute (``~`` expanded, links resolved); an empty one is refused."""
    if not v.strip():
        raise ValueError("path is empty")
    return str(Path(v).expanduser().resolve())


log = logging.getLogger(__name__)

#: Suffixes copied by an import (plus the exact names in ``KNOWN_NAMES``).
COPY_SUFFIXES = (".json", ".safetensors", ".model", ".txt", ".jinja", ".tiktoken")
KNOWN_NAMES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
#: What :func:`hub_download` fetches.
HUB_ALLOW = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
HUB_IGNORE = ["original/*", "onnx/*", "*.onnx", "*.onnx_data", "*.gguf", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack"]
_PROBE_TIMEOUT_S = 3.0


class ImportConfig(BaseModel):
    """Config of ``models.import``: which folder, and whether pickled weights may be converted."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="A Hugging Face model folder (config.json, *.safetensors, tokenizer files)")
    allow_pickle: bool = Field(
        False, description="Convert pickled weights (pytorch_model*.bin) to safetensors; pickles can run code when loaded, so this is off by default"
    )
    source: str | None = Field(None, description="Where the folder came from (e.g. hf:org/name); recorded in the manifest")

    _absolute = field_validator("path")(classmethod(lambda cls, v: absolute_path(v)))


# -- what a folder holds -----------------------------------------------------------------------------
def _trust_root(src: Path) -> Path:
    """Where symlinks in ``src`` may point: ``src`` itself, or the repo dir of an HF cache snapshot."""
    if src.parent.name == "snapshots" and src.parent.parent.name.startswith("models--"):
        return src.parent.parent
    return src


def scan_folder(src: Path) -> dict[str, list[str]]:
    """Classify the files of ``src`` (relative posix paths): ``copy``, ``pickles``, ``skipped``."""
    src = src.resolve()
    root = _trust_root(src)
    found: dict[str, list[str]] = {"copy": [], "pickles": [], "skipped": []}
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(src).as_posix()
            if name.startswith(".") or rel == "manifest.json":
                continue
            real = p.resolve()
            if real != root and root not in real.parents:
                raise UnsafeInput(f"{rel} in {src} links outside the folder", why=f"it points at {real}", fix="copy the real file into the folder")
            if name.endswith(PICKLE_SUFFIXES):
                found["pickles"].append(rel)
            elif name in KNOWN_NAMES or name.endswith(COPY_SUFFIXES):
                found["copy"].append(rel)
            else:
                found["skipped"].append(rel)
    return found


def folder_fingerprint(src: Path) -> str:
    """sha256 over (relative path, bytes) of the files an import would read."""
    src = Path(src).expanduser().resolve()
    if not src.is_dir():
        raise RefError(f"no such model folder: {src}", fix="check the path; it must be a folder holding config.json")
    found = scan_folder(src)
    h = hashlib.sha256()
    for rel in sorted(found["copy"] + found["pickles"]):
        h.update(rel.encode() + b"\0" + file_digest(src / rel).encode() + b"\n")
    return h.hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{path.name} in {path.parent} is not valid JSON", why=str(exc)) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name} in {path.parent} is not a JSON object")
    return data


def check_no_remote_code(src: Path) -> None:
    """Refuse a folder whose config or tokenizer config asks for remote code (``auto_map``)."""
    for name in ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json"):
        p = src / name
        if p.is_file() and "auto_map" in _read_json(p):
            raise UnsafeInput(
                f"{src.name} needs remote code: {name} has an auto_map",
                why="its model or tokenizer class is Python code shipped with the model, and slmops never enables trust_remote_code",
                fix="use a model whose architecture transformers supports natively, or a version of it converted to a native class",
            )


def describe_model(folder: Path) -> dict[str, Any]:
    """Facts about an HF model folder from its ``config.json``, safetensors headers and tokenizer files."""
    cfg = _read_json(folder / "config.json")
    text_cfg = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    w = weights_summary(folder)
    tok_cfg = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    has_template = bool(tok_cfg.get("chat_template")) or (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file()
    facts: dict[str, Any] = {
        "model_type": cfg.get("model_type"),
        "architecture": (cfg.get("architectures") or [None])[0],
        "parameters": w["parameters"],
        "weight_dtypes": w["dtypes"],
        "tensors": w["tensors"],
        "vocab_size": text_cfg.get("vocab_size"),
        "context_length": text_cfg.get("max_position_embeddings"),
        "hidden_size": text_cfg.get("hidden_size"),
        "num_layers": text_cfg.get("num_hidden_layers"),
        "tie_word_embeddings": cfg.get("tie_word_embeddings", text_cfg.get("tie_word_embeddings")),
        "tokenizer": {
            "files": sorted(p.name for p in folder.iterdir() if p.name in KNOWN_NAMES or p.name in ("tokenizer_config.json", "special_tokens_map.json")),
            "tokenizer_class": tok_cfg.get("tokenizer_class"),
            "chat_template": has_template,
            "bos_token": _token_text(tok_cfg.get("bos_token")),
            "eos_token": _token_text(tok_cfg.get("eos_token")),
            "add_bos_token": tok_cfg.get("add_bos_token"),
        },
    }
    return facts


def _token_text(tok: Any) -> str | None:
    return tok.get("content") if isinstance(tok, dict) else tok


# -- the import itself -------------------------------------------------------------------------------
def import_folder(cfg: ImportConfig, out: Path) -> dict[str, Any]:
    """Copy the HF folder ``cfg.path`` into ``out`` (safetensors only); return facts for the manifest."""
    src = Path(cfg.path)
    if not src.is_dir():
        raise RefError(f"no such model folder: {src}", fix="check the path; it must be a folder holding config.json")
    if not (src / "config.json").is_file():
        hint = "it looks like a PEFT adapter (adapter_config.json), not a model" if (src / "adapter_config.json").is_file() else None
        raise ConfigError(f"{src} has no config.json", why=hint or "an HF model folder needs config.json", fix="point at the folder that holds config.json and the weights")
    check_no_remote_code(src)
    found = scan_folder(src)
    for rel in found["copy"]:  # before anything is copied: a damaged file stops the import with one line
        if rel.endswith(".safetensors"):
            validate_safetensors(src / rel, label=f"{rel} in {src}")
    has_safetensors = any(r.endswith(".safetensors") for r in found["copy"])
    pickle_weights = [r for r in found["pickles"] if PICKLE_WEIGHTS.match(Path(r).name) and "/" not in r]
    converted: list[str] = []
    if not has_safetensors:
        if not pickle_weights:
            raise ConfigError(f"{src} holds no weights", why="found neither *.safetensors nor pytorch_model*.bin", fix="download the model's weights into the folder")
        if not cfg.allow_pickle:
            raise UnsafeInput(
                f"{src.name} has only pickled weights ({', '.join(pickle_weights)})",
                why="loading a pickle can run arbitrary code, so slmops reads safetensors only by default",
                fix="re-run with --allow-pickle (allow_pickle: true) to convert them to safetensors on import, or convert them yourself",
            )
        converted = convert_pickle_weights(src, [src / r for r in pickle_weights], out)
    pickle_indexes = [r for r in found["copy"] if r.endswith(".bin.index.json")]  # describe pickles, never copied
    skipped = sorted(found["skipped"] + pickle_indexes + [r for r in found["pickles"] if r not in pickle_weights or has_safetensors])
    for rel in skipped:
        log.info("import: skipping %s (not a model, tokenizer or config file)", rel)
    for rel in found["copy"]:
        if rel in pickle_indexes:
            continue
        target = contained(out, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, target)
    for f in safetensors_files(out):  # every shard the index names must have been copied
        if not f.is_file():
            raise StoreError(f"{src.name} is incomplete", why=f"model.safetensors.index.json names {f.name}, which is missing", fix="download the missing shard")
    facts = describe_model(out)
    facts.update(source=cfg.source or str(src), converted_from_pickle=sorted(pickle_weights) if converted else [], skipped_files=skipped)
    log.info("models.import: %s (%s, %s parameters)", src, facts["model_type"], facts["parameters"])
    return facts


def import_fingerprint(cfg: ImportConfig) -> str:
    return folder_fingerprint(Path(cfg.path))


# -- the hub -------------------------------------------------------------------------------------------
def _offline_error(repo_id: str, why: str) -> OfflineError:
    return OfflineError(
        f"cannot download hf:{repo_id}",
        why=why,
        fix=f"download the model on a machine with network access (e.g. `hf download {repo_id} --local-dir ./model`), copy the folder here and run `slmops models import ./model`",
    )


def _probe(endpoint: str, timeout: float) -> str | None:
    """None when ``endpoint`` accepts a TCP connection within ``timeout`` s, else why not."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")):
        return None  # a proxy decides; let the download itself fail
    url = urlparse(endpoint)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{host}:{port} is not reachable ({exc.strerror or exc})"


def _is_network_error(exc: BaseException) -> bool:
    """Connection/timeout errors of whichever HTTP client huggingface_hub uses (httpx or requests)."""
    if isinstance(exc, (ConnectionError, TimeoutError, socket.gaierror)):
        return True
    return any(k in c.__name__ for c in type(exc).__mro__ for k in ("Connect", "Timeout", "Network"))


def hub_download(repo_id: str, *, revision: str | None = None, local_dir: Path | None = None) -> Path:
    """Download the safetensors/config/tokenizer files of ``repo_id`` and return the folder.

    Files land in ``$SLMOPS_HOME/hub/<org>--<name>`` (real files, no cache symlinks). Offline
    (``HF_HUB_OFFLINE=1``/``SLMOPS_OFFLINE=1``) or with the hub unreachable this raises
    :class:`OfflineError` within a few seconds instead of retrying.
    """
    if "@" in repo_id and revision is None:
        repo_id, revision = repo_id.split("@", 1)
    if hub_offline():
        raise _offline_error(repo_id, "the hub is switched off (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE or SLMOPS_OFFLINE is set)")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if (why := _probe(endpoint, _PROBE_TIMEOUT_S)) is not None:
        raise _offline_error(repo_id, why)
    hub = require("huggingface_hub", extra="train", purpose="downloading from the Hugging Face hub")
    errors = require("huggingface_hub.errors", extra="train")
    dest = local_dir or slmops_home() / "hub" / (repo_id.replace("/", "--") + (f"--{revision.replace('/', '-')}" if revision else ""))
    t0 = time.monotonic()
    try:
        path = hub.snapshot_download(repo_id, revision=revision, allow_patterns=HUB_ALLOW, ignore_patterns=HUB_IGNORE, local_dir=str(dest), etag_timeout=10)
    except errors.GatedRepoError as exc:
        raise RefError(f"hf:{repo_id} is gated", why="the hub needs an accepted licence and a token", fix="accept the licence on the model page and run `hf auth login`") from exc
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError) as exc:
        raise RefError(f"hf:{repo_id} was not found on the hub", why=str(exc).splitlines()[0], fix="check the org/name (and @revision)") from exc
    except (errors.HfHubHTTPError, errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as exc:
        raise _offline_error(repo_id, str(exc).splitlines()[0] or type(exc).__name__) from exc
    except Exception as exc:
        if _is_network_error(exc):
            raise _offline_error(repo_id, f"{type(exc).__name__}: {exc}") from exc
        raise
    log.info("downloaded hf:%s to %s in %.1fs", repo_id, path, time.monotonic() - t0)
    return Path(path)


# -- convenience -------------------------------------------------------------------------------------
def import_model(ref: str | Path, *, store: Any = None, name: str | None = None, allow_pickle: bool = False) -> Artifact:
    """Import a folder (``./path``) or hub model (``hf:org/name``) through the cached ``models.import`` stage.

    The reference goes through :func:`slmops.stage.inputs.import_source`, which records where it came from.
    """
    from slmops.stage.inputs import import_source
    from slmops.store.refs import ModelRef
    from slmops.store.registry import Store

    text = str(ref)
    parsed = ModelRef.parse(text) if text.startswith("hf:") else ModelRef("path", text)
    if store is not None:
        return import_source(parsed, store, allow_pickle=allow_pickle, name=name)
    with Store() as s:
        return import_source(parsed, s, allow_pickle=allow_pickle, name=name)


def importer_for(store: Any, *, allow_pickle: bool = False) -> Callable[[Any], Artifact]:
    """An ``Importer`` for :func:`slmops.store.refs.resolve`: folders, files, ``pkg:`` and ``hf:`` refs become artifacts."""
    from slmops.stage.inputs import import_source

    return lambda ref: import_source(ref, store, allow_pickle=allow_pickle)
