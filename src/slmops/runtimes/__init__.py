"""Runtimes: one protocol, several engines (torch, ONNX Runtime GenAI, llama.cpp), chosen from what they declare.

:func:`open_runtime` turns an artifact (or a model folder, or a reference such as ``bot@prod``)
into a :class:`~slmops.runtimes.base.Runtime`. Engines register with :func:`register_runtime`,
declaring the formats they load (recorded in :mod:`slmops.formats`), the
:class:`~slmops.runtimes.base.Capabilities` they can offer, and the modules a timed load should
find imported; ``runtime="auto"`` picks the first registered runtime that loads the artifact's
format. Importing this package imports no engine (no torch, no onnxruntime).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmops import formats
from slmops.errors import ConfigError
from slmops.runtimes.base import (
    Capabilities,
    GenerationParams,
    GenerationResult,
    PromptTooLong,
    Runtime,
    TokenEvent,
)

if TYPE_CHECKING:
    from slmops.store.artifact import Artifact

__all__ = [
    "Capabilities",
    "GenerationParams",
    "GenerationResult",
    "PromptTooLong",
    "Runtime",
    "RuntimeSpec",
    "TokenEvent",
    "available_runtimes",
    "detect_format",
    "open_runtime",
    "planned_runtime",
    "register_runtime",
    "runtime_for",
    "runtime_spec",
]

RuntimeFactory = Callable[..., Runtime]


@dataclass(frozen=True)
class RuntimeSpec:
    """What a registered runtime declares: how to open a model, which formats it loads, what it can do."""

    name: str
    factory: RuntimeFactory  # factory(path, **options) -> Runtime
    formats: tuple[str, ...]  # the formats it loads (see slmops.formats)
    capabilities: Capabilities  # the most it offers; an opened runtime's own capabilities may say less
    imports: tuple[str, ...] = ()  # modules to import before a timed load, so load time is the model's (bench)
    extra: str | None = None  # the pip extra it needs
    title: str = ""  # how messages name it ("llama.cpp")


_SPECS: dict[str, RuntimeSpec] = {}


def register_runtime(
    name: str,
    factory: RuntimeFactory,
    *,
    formats: tuple[str, ...] | list[str] = (),
    capabilities: Capabilities | None = None,
    imports: tuple[str, ...] = (),
    extra: str | None = None,
    title: str | None = None,
) -> RuntimeSpec:
    """Make ``name`` available to :func:`open_runtime` for ``formats`` (each registered in :mod:`slmops.formats`)."""
    from slmops import formats as registry

    if name in _SPECS:
        registry.remove_runtime(name)
    spec = RuntimeSpec(name, factory, tuple(formats), capabilities or Capabilities(), tuple(imports), extra, title or name)
    _SPECS[name] = spec
    for fmt in spec.formats:
        registry.add_runtime(fmt, name)
    return spec


def unregister_runtime(name: str) -> None:
    """Remove a runtime (tests that register a toy one clean up with this)."""
    if _SPECS.pop(name, None) is not None:
        formats.remove_runtime(name)


def available_runtimes() -> list[str]:
    """Names of the registered runtimes (whether their dependencies are installed or not)."""
    return sorted(_SPECS)


def runtime_spec(name: str) -> RuntimeSpec:
    """What runtime ``name`` declared; ConfigError naming the registered ones when it is unknown."""
    spec = _SPECS.get(name)
    if spec is None:
        raise ConfigError(f"unknown runtime {name!r}", fix=f"use one of: auto, {', '.join(available_runtimes())}")
    return spec


def runtime_for(fmt: str, runtime: str = "auto") -> RuntimeSpec:
    """The runtime that opens format ``fmt``: ``auto`` picks the first registered one that loads it; a named one must load it."""
    if runtime == "auto":
        names = formats.runtimes_for(fmt)
        if not names:
            known = sorted(f for f in formats.names(served=True) if formats.runtimes_for(f))
            raise ConfigError(f"no runtime runs the {fmt!r} format", fix=f"known formats: {', '.join(known)}")
        return _SPECS[names[0]]
    spec = runtime_spec(runtime)
    if spec.formats and fmt not in spec.formats:
        preferred = formats.runtimes_for(fmt)
        raise ConfigError(
            f"the {spec.name} runtime cannot run a {fmt!r} artifact",
            fix=f"use --runtime {preferred[0] if preferred else 'auto'}, or export the model to a format {spec.name} runs "
            f"({', '.join(sorted(spec.formats))})",
        )
    return spec


def adapter_formats_for(fmt: str) -> tuple[str, ...]:
    """The adapter formats a base of format ``fmt`` can take at run time (what its ``auto`` runtime declares)."""
    names = formats.runtimes_for(fmt)
    return _SPECS[names[0]].capabilities.adapter_formats if names else ()


def planned_runtime(path: Path, runtime: str = "auto") -> RuntimeSpec:
    """The runtime ``open_runtime(path, runtime)`` will use, read from the folder without opening anything.

    An ``adapter`` artifact opens on its recorded base, so ``auto`` means the base's runtime.
    """
    from slmops.store.artifact import MANIFEST, Artifact, read_manifest

    path = Path(path)
    if not (path / MANIFEST).is_file():
        return runtime_for(detect_format(path), runtime)
    manifest = read_manifest(path)
    if manifest.kind == "adapter":
        if runtime != "auto":
            return runtime_spec(runtime)
        from slmops.runtimes.adapted import adapter_base

        manifest = adapter_base(Artifact(path, manifest)).manifest
    return runtime_for(manifest.format, runtime)


def _open_torch(path: Path, **options: Any) -> Runtime:
    from slmops.runtimes.torch_rt import TorchRuntime

    return TorchRuntime.from_path(path, **options)


def _open_llamacpp(path: Path, **options: Any) -> Runtime:
    from slmops.runtimes.llamacpp_rt import LlamaCppRuntime

    return LlamaCppRuntime.from_path(path, **options)


def _open_ortgenai(path: Path, **options: Any) -> Runtime:
    from slmops.runtimes.ortgenai_rt import OrtGenAIRuntime

    return OrtGenAIRuntime.from_path(path, **options)


register_runtime("torch", _open_torch, formats=("hf-safetensors",), imports=("torch", "transformers"), extra="train", title="torch",
                 capabilities=Capabilities(adapters=True, adapter_formats=("peft",), batching=True))
register_runtime("ort-genai", _open_ortgenai, formats=("ort-genai", "foundry-local"), imports=("onnxruntime_genai",), extra="onnx",
                 title="ONNX Runtime GenAI",
                 capabilities=Capabilities(adapters=True, adapter_formats=("peft", "onnx-adapter")))
register_runtime("llamacpp", _open_llamacpp, formats=("gguf",), imports=("llama_cpp",), extra="gguf", title="llama.cpp",
                 capabilities=Capabilities(adapters=True, adapter_formats=("peft", "gguf-lora"), batching=True))


def detect_format(path: Path) -> str:
    """The format of a model folder (or file) without a manifest: from the files it holds (:func:`slmops.formats.detect`)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} is not a model folder", fix="point at a Hugging Face folder, an ONNX GenAI folder or a .gguf file")
    fmt = formats.detect(path)
    if fmt is not None:
        return fmt
    if not path.is_dir():
        raise ConfigError(f"{path} is not a model folder", fix="point at a Hugging Face folder, an ONNX GenAI folder or a .gguf file")
    markers = sorted({m for f in formats.all_formats() if f.served for m in f.markers})
    raise ConfigError(
        f"cannot tell what kind of model {path} holds",
        why=f"none of {', '.join(markers)} is in it",
        fix="pass runtime= explicitly",
    )


def _locate(artifact: Artifact | str | Path) -> tuple[Path, str, str | None]:
    """(path, format, kind) for an artifact, a folder, or a store reference; an artifact's weights are verified.

    Every artifact opened for inference is checked against its digest (hashed once, then cached
    while its files are unchanged; see :mod:`slmops.store.verified`), so damaged weights fail here
    with one line instead of loading silently.
    """
    from slmops.store.artifact import MANIFEST, Artifact, read_manifest
    from slmops.store.verified import ensure_verified

    label = None if isinstance(artifact, Artifact | Path) else str(artifact)
    if isinstance(artifact, str) and artifact.startswith("pkg:"):
        from slmops.store.packaged import locate

        artifact = locate(artifact[4:])  # a packaged model file runs where it lies
    if not isinstance(artifact, Artifact):
        p = Path(str(artifact)).expanduser()
        if p.exists():
            if not (p / MANIFEST).is_file():
                return p.resolve(), detect_format(p), None
            artifact = Artifact(p.resolve(), read_manifest(p))
        elif isinstance(artifact, Path):
            raise ConfigError(f"no such model folder: {artifact}", fix="check the path")
        else:
            from slmops.store import Store
            from slmops.store.refs import resolve

            with Store() as store:
                artifact = resolve(str(artifact), store)
    ensure_verified(artifact, label=label)
    return artifact.path, artifact.manifest.format, artifact.kind


def open_runtime(artifact: Artifact | str | Path, runtime: str = "auto", **options: Any) -> Runtime:
    """Open a model for inference on ``runtime`` (``auto``: the engine made for the artifact's format).

    ``artifact`` is an :class:`~slmops.store.artifact.Artifact` (an ``adapter`` opens on its recorded
    base, see :mod:`slmops.runtimes.adapted`), a folder path, or a reference the store resolves (``name``, ``name:3``, ``name@prod``, ``sha256:…``). ``options`` go to the engine
    (torch: ``dtype``, ``device``, ``allow_pickle``, ``chat_template``).
    """
    path, fmt, kind = _locate(artifact)
    if kind == "adapter":  # its recorded base with the adapter applied in memory (see runtimes/adapted.py)
        from slmops.runtimes.adapted import open_adapter
        from slmops.store.artifact import Artifact, read_manifest

        return open_adapter(artifact if isinstance(artifact, Artifact) else Artifact(path, read_manifest(path)), runtime, **options)
    if kind is not None and kind not in formats.runnable_kinds():
        raise ConfigError(f"{artifact} is a {kind} artifact, not a model", fix=f"pass a {', '.join(formats.runnable_kinds())} artifact")
    return runtime_for(fmt, runtime).factory(path, **options)
