"""What a run-time adapter is, and which served base can take it (``/v1/load_lora_adapter`` and adapter ids).

An adapter comes in one of three formats, and each runtime applies some of them (what it declares
in ``register_runtime``'s capabilities, read through :func:`runs_on`):

* ``peft`` — a PEFT LoRA folder (``adapter_config.json`` + ``adapter_model.safetensors``) or an
  ``adapter`` artifact of that format. Every runtime takes it: torch loads it with PEFT, llama.cpp
  converts it to a GGUF LoRA against the GGUF's own layout, ORT GenAI converts it to the model's
  LoRA inputs (an ONNX export made with ``--adapter-mode runtime``);
* ``gguf-lora`` — a GGUF LoRA file (``general.type = adapter``), or an ``export.gguf_lora`` artifact
  or folder (``adapter.gguf``): llama.cpp only, so only on a GGUF base;
* ``onnx-adapter`` — an ONNX Runtime ``.onnx_adapter`` file, or an adapter packaged in an
  ``export.onnx`` artifact (``adapters/NAME.onnx_adapter``, served as the id ``MODEL/NAME``):
  ORT GenAI only, so only on an ONNX base.

An adapter also has the model it was trained on when the store knows it (an artifact's ``model``
parent; a PEFT folder whose ``base_model_name_or_path`` is a store artifact), and a base has the
model it was made from (itself, or the ``model`` parent of its GGUF/ONNX export): the two must be
the same, or the load is refused before anything is opened (:func:`check_fits`).

Paths from a request are resolved (symlinks followed); a folder's files must lie inside it, a file
must be a regular ``.gguf`` or ``.onnx_adapter`` file, and a file is opened only to check that it is
what it claims to be (GGUF header and ``general.type``, ONNX Runtime's adapter format) before a
runtime loads it. A path inside the store is treated as the artifact it belongs to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from slmops import formats
from slmops._optional import require
from slmops.errors import ConfigError, SlmopsError, StoreError, UnsafeInput
from slmops.runtimes import adapter_formats_for, available_runtimes, runtime_spec
from slmops.store.artifact import Artifact
from slmops.store.registry import Store

PEFT, GGUF_LORA, ONNX_ADAPTER = "peft", "gguf-lora", "onnx-adapter"
_FIX = {GGUF_LORA: "pass base_model naming a GGUF export of the adapter's base (slmops export gguf), or load the PEFT adapter it came from",
        ONNX_ADAPTER: "pass base_model naming the ONNX export it belongs to (exported with --adapter-mode runtime), "
                      "or load the PEFT adapter it came from"}
GGUF_LORA_FILE = "adapter.gguf"
ONNX_ADAPTER_SUFFIX = ".onnx_adapter"


class AdapterMismatch(ConfigError):
    """An adapter that cannot go on the base it was asked to go on (wrong format or trained on another model)."""


@dataclass(frozen=True)
class AdapterSource:
    """One adapter as a runtime will load it."""

    fmt: str  # PEFT, GGUF_LORA or ONNX_ADAPTER
    path: Path  # the folder or file handed to the runtime's load_adapter
    digest: str  # the artifact's digest, or "path:<resolved path>"
    label: str  # how messages name it
    trained_on: str | None = None  # digest of the model it was trained on, when known
    default_base: str | None = None  # the ref it goes on when the request names no base_model


# ---------------------------------------------------------------------------------------- formats


def runs_on(base: Artifact) -> tuple[str, ...]:
    """The adapter formats a served base takes: what the runtime that serves its format declares."""
    return adapter_formats_for(base.manifest.format) if base.kind in formats.model_kinds() else ()


def _title(fmt: str) -> str:
    f = formats.get(fmt)
    return f.title if f is not None and f.title else fmt


def _adapter_text(fmt: str) -> str:
    """``a GGUF LoRA adapter (llama.cpp only)``: the format, and the runtime when only one takes it."""
    takers = [runtime_spec(n).title for n in available_runtimes() if fmt in runtime_spec(n).capabilities.adapter_formats]
    return f"{_title(fmt)} ({takers[0]} only)" if len(takers) == 1 else _title(fmt)


def _base_text(base: Artifact) -> str:
    """``a GGUF model served on llama.cpp``."""
    runtimes = formats.runtimes_for(base.manifest.format)
    if not runtimes:
        return f"a {base.kind} artifact"
    return f"{_title(base.manifest.format)} served on {runtime_spec(runtimes[0]).title}"


# ---------------------------------------------------------------------------------------- lineage


def source_model(store: Store, art: Artifact) -> str | None:
    """Digest of the Hugging Face model ``art`` is (kind ``model``) or was exported from; None when unknown."""
    seen = 0
    while art.kind != "model" and seen < 8:
        parents = [d for d, role in store.parents(art.digest) if role == "model"]
        if not parents:
            return None
        try:
            art = store.get(parents[0])
        except StoreError:
            return None
        seen += 1
    return art.digest if art.kind == "model" else None


def check_fits(src: AdapterSource, base: Artifact, base_id: str, store: Store | None = None) -> None:
    """Refuse (:class:`AdapterMismatch`) an adapter the base's runtime cannot apply, or one trained on another model.

    Without ``store`` only the format is checked (cheap enough for every request).
    """
    runs = runs_on(base)
    if src.fmt not in runs:
        raise AdapterMismatch(
            f"{src.label} is {_adapter_text(src.fmt)} and {base_id!r} is {_base_text(base)}",
            why=f"that runtime takes {' or '.join(sorted(_title(f) for f in runs)) or 'no adapters'}",
            fix=_FIX.get(src.fmt, "pass base_model naming a model that takes it"),
        )
    if store is None or src.trained_on is None:
        return
    made_from = source_model(store, base)
    if made_from is not None and made_from != src.trained_on:
        built = "" if made_from == base.digest else f" (built from sha256:{made_from[:12]})"
        raise AdapterMismatch(
            f"{src.label} was trained on sha256:{src.trained_on[:12]}, but {base_id!r} is sha256:{base.short}{built}",
            why="an adapter only makes sense on the weights it was trained against",
            fix=f"pass base_model naming sha256:{src.trained_on[:12]} or a GGUF/ONNX export of it",
        )


# ---------------------------------------------------------------------------------------- sources


def from_artifact(store: Store, art: Artifact, label: str) -> AdapterSource:
    """The adapter in an ``adapter`` artifact (PEFT, or an ``export.gguf_lora`` GGUF LoRA)."""
    if art.kind != "adapter":
        raise ConfigError(f"{label} is a {art.kind} artifact, not an adapter",
                          fix="pass an adapter artifact, a PEFT folder or a GGUF LoRA file")
    trained = [d for d, role in store.parents(art.digest) if role == "model"]
    trained_on = trained[0] if trained else None
    if art.manifest.format == GGUF_LORA or (art.path / GGUF_LORA_FILE).is_file():
        check_gguf_lora(_inside(art.path, GGUF_LORA_FILE))
        return AdapterSource(GGUF_LORA, art.path, art.digest, label, trained_on)
    _check_peft_folder(art.path, label)
    return AdapterSource(PEFT, art.path, art.digest, label, trained_on, default_base=f"sha256:{trained_on}" if trained_on else None)


def from_path(store: Store, text: str) -> AdapterSource:
    """The adapter at a path from a request: a PEFT folder, a GGUF LoRA (file or folder) or an ``.onnx_adapter`` file."""
    try:
        path = Path(text).expanduser().resolve()
        path.is_file()
    except (OSError, RuntimeError, ValueError) as exc:  # a NUL byte, an unknown ~user, a path too long
        raise ConfigError(f"{text!r} is not a usable path", why=type(exc).__name__, fix="pass the adapter's folder or file") from exc
    art = _store_artifact(store, path)
    if art is not None and (art.kind == "adapter" or path.is_dir()):
        return from_artifact(store, art, repr(text))
    label = repr(text)
    if path.is_dir():
        if (path / GGUF_LORA_FILE).exists():
            file = _inside(path, GGUF_LORA_FILE)
            check_gguf_lora(file)
            return AdapterSource(GGUF_LORA, file, f"path:{file}", label)
        _check_peft_folder(path, label)
        trained_on = _peft_trained_on(store, path)
        return AdapterSource(PEFT, path, f"path:{path}", label, trained_on, default_base=f"sha256:{trained_on}" if trained_on else None)
    if not path.is_file():
        raise ConfigError(f"no adapter at {text}",
                          fix="pass a PEFT adapter folder, a GGUF LoRA (.gguf) or an .onnx_adapter file, or a store reference")
    if path.suffix == ".gguf":
        check_gguf_lora(path)
        return AdapterSource(GGUF_LORA, path, f"path:{path}", label)
    if path.name.endswith(ONNX_ADAPTER_SUFFIX):
        check_onnx_adapter(path)
        if art is not None and path in packaged(art).values():  # a file of an ONNX export in the store
            return AdapterSource(ONNX_ADAPTER, path, art.digest, label, source_model(store, art), default_base=f"sha256:{art.digest}")
        return AdapterSource(ONNX_ADAPTER, path, f"path:{path}", label)
    raise ConfigError(f"{text} is not an adapter file",
                      why="a file adapter must be a GGUF LoRA (.gguf) or an ONNX Runtime adapter (.onnx_adapter)",
                      fix="pass one of those, or a PEFT adapter folder")


def packaged(base: Artifact) -> dict[str, Path]:
    """Adapters packaged in an ONNX export (``adapter_mode=runtime``): name → ``.onnx_adapter`` file inside it."""
    if base.kind != "onnx":
        return {}
    listed = base.manifest.meta.get("adapters") or {}
    out: dict[str, Path] = {}
    if isinstance(listed, dict):
        for name, rel in listed.items():
            try:
                out[str(name)] = _inside(base.path, str(rel))
            except SlmopsError:
                continue
    return out


# ---------------------------------------------------------------------------------------- checks


def check_gguf_lora(file: Path) -> None:
    """Refuse anything that is not a well-formed GGUF file with ``general.type = adapter``."""
    from slmops.models.gguf_file import check_gguf_file

    facts = check_gguf_file(file)
    if facts.get("type") != "adapter":
        raise ConfigError(f"{file.name} is a GGUF file but not a LoRA adapter (general.type is {facts.get('type') or 'unset'})",
                          fix="serve a GGUF model as a model id; convert a PEFT adapter with slmops export gguf-lora")


def check_onnx_adapter(file: Path) -> None:
    """Refuse anything ONNX Runtime does not read as an adapter file."""
    ort = require("onnxruntime", extra="onnx", purpose="reading an ONNX Runtime adapter")
    try:
        ort.AdapterFormat.read_adapter(str(file))
    except Exception as exc:  # onnxruntime raises RuntimeError for anything unreadable
        raise ConfigError(f"{file.name} is not an ONNX Runtime adapter", why="ONNX Runtime cannot read it as one",
                          fix="write it with slmops export onnx --adapter-mode runtime") from exc


def _check_peft_folder(path: Path, label: str) -> None:
    if not (path / "adapter_config.json").is_file() or not (path / "adapter_model.safetensors").is_file():
        raise ConfigError(f"{label} is not an adapter folder",
                          why="it holds neither adapter.gguf nor a PEFT adapter (adapter_config.json + adapter_model.safetensors)",
                          fix="pass a PEFT adapter folder with safetensors weights, a GGUF LoRA or an .onnx_adapter file")
    for f in [path / "adapter_config.json", *path.glob("adapter_model*")]:
        _inside(path, f.name)


def _inside(folder: Path, rel: str) -> Path:
    """``folder/rel`` resolved, refused unless it is a regular file inside ``folder``."""
    root = folder.resolve()
    file = (root / rel).resolve()
    if not file.is_relative_to(root):
        raise UnsafeInput(f"{rel} points outside its adapter folder", fix="copy the file into the folder instead of linking it")
    if not file.is_file():
        raise ConfigError(f"{rel} is missing from the adapter folder", fix="export the adapter again")
    return file


def _store_artifact(store: Store, path: Path) -> Artifact | None:
    root = store.artifacts.resolve()
    if not path.is_relative_to(root) or path == root:
        return None
    digest = path.relative_to(root).parts[0]
    try:
        return store.get(digest)
    except StoreError:
        return None


def _peft_trained_on(store: Store, path: Path) -> str | None:
    """The store model a PEFT folder says it was trained on (``base_model_name_or_path`` inside the store)."""
    try:
        cfg = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    base = cfg.get("base_model_name_or_path") if isinstance(cfg, dict) else None
    if not isinstance(base, str) or not base.startswith(("/", "~")):
        return None
    art = _store_artifact(store, Path(base).expanduser().resolve())
    return art.digest if art is not None and art.kind == "model" else None
