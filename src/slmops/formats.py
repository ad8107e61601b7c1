"""The one registry of artifact formats: what kind each is stored as, which runtimes load it, which extra it needs, how it is measured.

Every table that used to spell formats out (``("model", "onnx", "gguf")`` tuples, format → runtime
maps, the device profiles' allowed formats, the optimize targets, the library versions a manifest
records, which adapters a served base takes) reads this registry instead, so a new format is one
:func:`register_format` call plus the module that makes or runs it. Runtimes add themselves to the
formats they load with :func:`slmops.runtimes.register_runtime` (:func:`add_runtime` here), in
registration order, which is the order ``runtime="auto"`` prefers.

A plain data module at the bottom of the package (it imports nothing of slmops), so the store, the
runtimes, the server and the CLI can all read it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

#: How an artifact's quality is measured: ``reference`` (the model the others are compared with),
#: ``parity`` (KL / top-1 / greedy match against the model it was made from), ``adapter`` (on its base).
MEASURES = ("reference", "parity", "adapter")


@dataclass(frozen=True)
class Format:
    """One artifact format (the ``format`` of a manifest)."""

    name: str  # as manifests write it: "hf-safetensors", "ort-genai", "gguf", "peft" …
    kind: str  # the artifact kind it is stored as: "model", "onnx", "gguf", "adapter"
    title: str = ""  # how messages name it: "a GGUF model", "a PEFT LoRA adapter"
    extra: str | None = None  # the pip extra its runtimes need (a key of slmops._optional.EXTRAS)
    libs: tuple[str, ...] = ()  # distributions whose versions its artifacts record (manifest ``libs``)
    markers: tuple[str, ...] = ()  # file names / globs that mark a folder (or file) without a manifest as this format
    target: str | None = None  # the FORMAT of optimize / device-profile targets (``gguf`` in ``gguf:q4_k_m``)
    export_stage: str | None = None  # the stage that makes it from a ``model``
    measure: str = "parity"  # one of MEASURES
    served: bool = True  # opened as a model (a base of adapters), not applied onto one

    def matches(self, path: Path) -> bool:
        """Whether a folder (or a single file) holds this format, by its marker files."""
        globs = [m for m in self.markers if any(c in m for c in "*?[")]
        if path.is_file():  # a single file is only ever matched by a pattern (``*.gguf``), never by a folder's file name
            return any(fnmatch.fnmatch(path.name, m) for m in globs)
        return any(any(path.glob(m)) if m in globs else (path / m).is_file() for m in self.markers)


_FORMATS: dict[str, Format] = {}
_RUNTIMES: dict[str, list[str]] = {}  # format -> runtimes that load it, in registration order
_DETECT_LAST: list[str] = []  # formats whose markers are generic (a Hugging Face config.json): checked after the others


def register_format(fmt: Format, *, detect_last: bool = False) -> Format:
    """Add (or replace) a format; ``detect_last`` when its markers would also match other formats' folders."""
    if fmt.measure not in MEASURES:
        raise ValueError(f"measure {fmt.measure!r} is not one of {MEASURES}")
    _FORMATS[fmt.name] = fmt
    _RUNTIMES.setdefault(fmt.name, [])
    if detect_last and fmt.name not in _DETECT_LAST:
        _DETECT_LAST.append(fmt.name)
    return fmt


def unregister_format(name: str) -> None:
    """Remove a format (tests that register a toy one clean up with this)."""
    _FORMATS.pop(name, None)
    _RUNTIMES.pop(name, None)
    if name in _DETECT_LAST:
        _DETECT_LAST.remove(name)


def add_runtime(fmt: str, runtime: str) -> None:
    """Record that ``runtime`` loads ``fmt`` (called by ``register_runtime``); the first registered is ``auto``'s choice."""
    if fmt not in _FORMATS:
        raise KeyError(f"format {fmt!r} is not registered; register_format() it first")
    if runtime not in _RUNTIMES[fmt]:
        _RUNTIMES[fmt].append(runtime)


def remove_runtime(runtime: str) -> None:
    for names in _RUNTIMES.values():
        if runtime in names:
            names.remove(runtime)


def get(name: str) -> Format | None:
    return _FORMATS.get(name)


def all_formats() -> list[Format]:
    return list(_FORMATS.values())


def names(*, served: bool | None = None) -> tuple[str, ...]:
    """Registered format names (``served=True``: formats opened as models; ``False``: adapter formats)."""
    return tuple(f.name for f in _FORMATS.values() if served is None or f.served == served)


def runtimes_for(fmt: str) -> tuple[str, ...]:
    """The runtimes that load ``fmt``, the preferred (``auto``) first."""
    return tuple(_RUNTIMES.get(fmt, ()))


def model_kinds() -> tuple[str, ...]:
    """Artifact kinds that open as a model on a runtime (``model``, ``onnx``, ``gguf`` …): the bases a server loads."""
    return tuple(dict.fromkeys(f.kind for f in _FORMATS.values() if f.served))


def runnable_kinds() -> tuple[str, ...]:
    """Kinds ``open_runtime`` accepts: every model kind, and ``adapter`` (opened on its recorded base)."""
    return (*model_kinds(), "adapter")


def by_target(target: str) -> Format | None:
    """The format an optimize / profile target prefix (``gguf``, ``onnx``) stands for."""
    return next((f for f in _FORMATS.values() if f.target == target), None)


def targets() -> tuple[str, ...]:
    return tuple(f.target for f in _FORMATS.values() if f.target)


def tracked_libs() -> tuple[str, ...]:
    """Distributions whose installed versions every manifest records (the union over formats)."""
    return tuple(dict.fromkeys(lib for f in _FORMATS.values() for lib in f.libs))


def detect(path: Path) -> str | None:
    """The format of a folder (or file) without a manifest, from its marker files; None when nothing matches."""
    path = Path(path)
    order = [f for f in _FORMATS.values() if f.name not in _DETECT_LAST] + [_FORMATS[n] for n in _DETECT_LAST if n in _FORMATS]
    return next((f.name for f in order if f.served and f.markers and f.matches(path)), None)


# ------------------------------------------------------------------ the built-in formats
# Registration order is the order formats are listed and detected in (``detect_last`` ones after the rest).

register_format(Format("hf-safetensors", kind="model", title="a Hugging Face model", extra="train", libs=("torch", "transformers", "peft", "tokenizers"),
                       markers=("config.json",), measure="reference"), detect_last=True)
register_format(Format("ort-genai", kind="onnx", title="an ONNX model", extra="onnx", libs=("onnxruntime", "onnxruntime-genai"), markers=("genai_config.json",),
                       target="onnx", export_stage="export.onnx"))
register_format(Format("gguf", kind="gguf", title="a GGUF model", extra="gguf", libs=("gguf", "llama-cpp-python"), markers=("*.gguf",), target="gguf",
                       export_stage="export.gguf"))
register_format(Format("foundry-local", kind="onnx", title="a Foundry Local model", extra="onnx", export_stage="export.foundry"))
register_format(Format("peft", kind="adapter", title="a PEFT LoRA adapter", extra="train", markers=("adapter_config.json",), measure="adapter", served=False))
register_format(Format("gguf-lora", kind="adapter", title="a GGUF LoRA adapter", extra="gguf", markers=("adapter.gguf",), measure="adapter", served=False))
register_format(Format("onnx-adapter", kind="adapter", title="an ONNX Runtime adapter", extra="onnx", markers=("*.onnx_adapter",), measure="adapter", served=False))
