"""What a model artifact is, read from its manifest: parameters, size on disk, format, precision.

Speed reports (``bench``) and eval reports (``evaluate``) both describe their target with these facts.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slmops.store.artifact import Artifact


def model_facts(artifact: Artifact) -> dict[str, Any]:
    """Parameters, size on disk, format and precision of a model artifact, from its manifest.

    An adapter is described as what runs: its base's facts, the size of base + adapter, and both digests.
    """
    if artifact.kind == "adapter":
        from slmops.runtimes.adapted import adapter_base

        base = adapter_base(artifact)
        facts = model_facts(base)
        return {**facts, "digest": artifact.digest, "artifact_kind": "adapter", "base": base.digest,
                "format": f"{facts['format']}+{artifact.manifest.format}",
                "size_bytes": (facts["size_bytes"] or 0) + (artifact.manifest.size_bytes or 0),
                "adapter_size_bytes": artifact.manifest.size_bytes}
    m = artifact.manifest
    meta = m.meta
    precision = next((str(meta[k]) for k in ("precision", "qtype", "quantization", "dtype", "torch_dtype") if meta.get(k)), None)
    if precision is None and (artifact.path / "config.json").is_file():
        try:
            cfg = json.loads((artifact.path / "config.json").read_text())
            precision = cfg.get("dtype") or cfg.get("torch_dtype")
        except (OSError, ValueError):
            precision = None
    return {
        "digest": m.digest, "format": m.format, "artifact_kind": m.kind, "size_bytes": m.size_bytes,
        "parameters": m.metrics.get("parameters") or meta.get("parameters"), "precision": precision or "unknown",
        "architecture": meta.get("architecture") or meta.get("arch"),
    }


