"""Runtimes: one protocol, several engines (torch today; ONNX Runtime GenAI and llama.cpp to come).

:func:`open_runtime` turns an artifact (or a model folder, or a reference such as ``bot@prod``)
into a :class:`~slmops.runtimes.base.Runtime`, choosing the engine from the artifact's format
when ``runtime="auto"``. Engines register a factory with :func:`register_runtime`; importing this
package imports none of them (no torch, no onnxruntime).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    "FORMAT_RUNTIMES",
    "TARGET_KINDS",
    "Capabilities",
    "GenerationParams",
    "GenerationResult",
    "PromptTooLong",
    "Runtime",
    "TokenEvent",
    "available_runtimes",
    "detect_format",
    "open_runtime",
    "register_runtime",
]

#: Artifact format -> the runtime ``auto`` picks for it.
FORMAT_RUNTIMES: dict[str, str] = {
    "hf-safetensors": "torch",
    "ort-genai": "ort-genai",
    "onnx": "ort-genai",
    "foundry-local": "ort-genai",
    "gguf": "llamacpp",
}

#: Artifact kinds :func:`open_runtime` opens (an adapter on its recorded base).
TARGET_KINDS: tuple[str, ...] = ("model", "onnx", "gguf", "adapter")

RuntimeFactory = Callable[..., Runtime]
_FACTORIES: dict[str, RuntimeFactory] = {}
_FORMATS: dict[str, set[str]] = {}


def register_runtime(name: str, factory: RuntimeFactory, *, formats: tuple[str, ...] | list[str] = ()) -> None:
    """Make ``name`` available to :func:`open_runtime`; ``factory(path, **options)`` opens a model."""
    _FACTORIES[name] = factory
    _FORMATS[name] = set(formats)


def available_runtimes() -> list[str]:
    """Names of the registered runtimes (whether their dependencies are installed or not)."""
    return sorted(_FACTORIES)


def _open_torch(path: Path, **options: Any) -> Runtime:
    from slmops.runtimes.torch_rt import TorchRuntime

    return TorchRuntime.from_path(path, **options)


def _open_llamacpp(path: Path, **options: Any) -> Runtime:
    from slmops.runtimes.llamacpp_rt import LlamaCppRuntime

    return LlamaCppRuntime.from_path(path, **options)


def _open_ortgenai(path: Path, **options: Any) -> Runtime:
    from slmops.runtimes.ortgenai_rt import OrtGenAIRuntime

    return OrtGenAIRuntime.from_path(path, **options)


def _not_yet(name: str, extra: str) -> RuntimeFactory:
    def factory(path: Path, **options: Any) -> Runtime:
        raise ConfigError(
            f"the {name} runtime is not available yet",
            why=f"slmops cannot run this artifact with {name} in this version ([{extra}] support is coming)",
            fix="serve or evaluate the hf-safetensors parent of this artifact with --runtime torch",
        )

    return factory


register_runtime("torch", _open_torch, formats=("hf-safetensors",))
register_runtime("ort-genai", _open_ortgenai, formats=("ort-genai", "onnx", "foundry-local"))
register_runtime("llamacpp", _open_llamacpp, formats=("gguf",))


def detect_format(path: Path) -> str:
    """The format of a model folder without a manifest: from the files it holds."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return "gguf"
    if not path.is_dir():
        raise ConfigError(f"{path} is not a model folder", fix="point at a Hugging Face folder, an ONNX GenAI folder or a .gguf file")
    if (path / "genai_config.json").is_file():
        return "ort-genai"
    if any(path.glob("*.gguf")):
        return "gguf"
    if (path / "config.json").is_file():
        return "hf-safetensors"
    raise ConfigError(
        f"cannot tell what kind of model {path} holds",
        why="no config.json, genai_config.json or .gguf file",
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
    if kind is not None and kind not in TARGET_KINDS:
        raise ConfigError(f"{artifact} is a {kind} artifact, not a model", fix="pass a model, onnx, gguf or adapter artifact")
    if runtime == "auto":
        name = FORMAT_RUNTIMES.get(fmt)
        if name is None:
            raise ConfigError(f"no runtime runs the {fmt!r} format", fix=f"known formats: {', '.join(sorted(FORMAT_RUNTIMES))}")
    else:
        name = runtime
        if name not in _FACTORIES:
            raise ConfigError(f"unknown runtime {runtime!r}", fix=f"use one of: auto, {', '.join(available_runtimes())}")
        if _FORMATS.get(name) and fmt not in _FORMATS[name]:
            raise ConfigError(
                f"the {name} runtime cannot run a {fmt!r} artifact",
                fix=f"use --runtime {FORMAT_RUNTIMES.get(fmt, 'auto')}, or export the model to a format {name} runs ({', '.join(sorted(_FORMATS[name]))})",
            )
    return _FACTORIES[name](path, **options)
