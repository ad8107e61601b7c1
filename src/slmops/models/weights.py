"""Weight files: facts read from safetensors headers (no torch), and pickle → safetensors conversion.

A safetensors file starts with an 8-byte little-endian header length and a JSON header naming every
tensor's dtype and shape, so parameter counts and dtypes come from a few kilobytes of each file.
Pickled checkpoints (``pytorch_model*.bin``) are only ever opened by :func:`convert_pickle_weights`,
which the importer calls when the user opted in with ``allow_pickle``; even then they are read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import struct
from collections import Counter
from pathlib import Path
from typing import Any

from slmops._optional import require
from slmops.errors import UnsafeInput
from slmops.store.artifact import contained

log = logging.getLogger(__name__)

_MAX_HEADER = 100 << 20
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
#: Pickled files that hold model/adapter weights in the HF layout (others, e.g. training_args.bin, are skipped).
PICKLE_WEIGHTS = re.compile(r"^(pytorch_model|adapter_model)(-\d{5}-of-\d{5})?\.bin$")


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor name -> dtype/shape/offsets, plus ``__metadata__``)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise UnsafeInput(f"{path.name} is not a safetensors file", why="it is shorter than a header")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER or n > path.stat().st_size - 8:
            raise UnsafeInput(f"{path.name} is not a valid safetensors file", why=f"its header claims {n} bytes")
        try:
            header = json.loads(f.read(n))
        except ValueError as exc:
            raise UnsafeInput(f"{path.name} is not a valid safetensors file", why="its header is not JSON") from exc
    if not isinstance(header, dict):
        raise UnsafeInput(f"{path.name} is not a valid safetensors file", why="its header is not a JSON object")
    return header


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of an HF folder: those named by ``model.safetensors.index.json``, else every ``*.safetensors``."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        return sorted({contained(folder, name) for name in weight_map.values()})
    return sorted(p for p in folder.glob("*.safetensors") if p.is_file())


def weights_summary(folder: Path) -> dict[str, Any]:
    """Parameter count, per-dtype counts and tensor count of the safetensors weights in ``folder``."""
    params = 0
    tensors = 0
    dtypes: Counter[str] = Counter()
    for path in safetensors_files(folder):
        for name, info in read_safetensors_header(path).items():
            if name == "__metadata__":
                continue
            n = math.prod(info.get("shape", []))
            params += n
            tensors += 1
            dtypes[str(info.get("dtype"))] += n
    return {"parameters": params, "tensors": tensors, "dtypes": dict(sorted(dtypes.items()))}


def convert_pickle_weights(src: Path, pickles: list[Path], out: Path) -> list[str]:
    """Convert HF pickle weight shards into safetensors files in ``out``; return the names written.

    ``pytorch_model.bin`` → ``model.safetensors`` (shards and ``*.bin.index.json`` likewise;
    ``adapter_model.bin`` → ``adapter_model.safetensors``). Tensors that share storage (tied
    weights) are stored as separate copies, so loading never depends on pickle aliasing.
    """
    torch = require("torch", extra="train", purpose="converting pickle weights")
    st = require("safetensors.torch", extra="train", purpose="converting pickle weights")
    written: list[str] = []
    renames: dict[str, str] = {}
    for path in pickles:
        log.warning("loading pickle %s (allow_pickle is on; weights_only=True)", path.name)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # the restricted unpickler refuses anything but tensors and containers
            raise UnsafeInput(f"cannot read {path.name} safely", why=str(exc).splitlines()[0], fix="convert it to safetensors with the tool that wrote it") from exc
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UnsafeInput(f"{path.name} is not a plain state dict of tensors", fix="convert it to safetensors with the tool that wrote it")
        target = path.name.replace("pytorch_model", "model").removesuffix(".bin") + ".safetensors"
        seen: set[int] = set()
        tensors = {}
        for k, v in state.items():
            ptr = v.untyped_storage().data_ptr() if v.numel() else -1
            tensors[k] = v.detach().clone().contiguous() if ptr in seen else v.detach().contiguous()
            if ptr != -1:
                seen.add(ptr)
        st.save_file(tensors, str(contained(out, target)), metadata={"format": "pt"})
        renames[path.name] = target
        written.append(target)
    for index_name in ("pytorch_model.bin.index.json", "adapter_model.bin.index.json"):
        index = src / index_name
        if index.is_file():
            data = json.loads(index.read_text())
            data["weight_map"] = {k: renames.get(v, v) for k, v in data.get("weight_map", {}).items()}
            new_name = index_name.replace("pytorch_model.bin", "model.safetensors").replace("adapter_model.bin", "adapter_model.safetensors")
            contained(out, new_name).write_text(json.dumps(data, indent=2) + "\n")
            written.append(new_name)
    return written
