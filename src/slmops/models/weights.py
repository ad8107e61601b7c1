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


#: Bits per element of every safetensors dtype (``F4``/``F6_*`` pack several elements per byte).
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64, "C64": 64,
}
#: More parameters than any model one machine can fine-tune or serve; a header claiming more is damaged or hostile.
MAX_PARAMETERS = 10**12


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"tensor {dup!r} is named twice")
    return dict(pairs)


def validate_safetensors(path: Path, *, label: str | None = None) -> int:
    """Check the whole structure of a safetensors file; return its parameter count.

    The header must be a JSON object (no duplicate names) whose tensors each have a known dtype, a
    shape of non-negative integers and ``data_offsets`` whose span is exactly dtype × shape bytes;
    the spans, sorted, must tile the data section from its first byte to the file's last (no gap, no
    overlap, nothing past the end, so a truncated file fails), and the total must stay under
    :data:`MAX_PARAMETERS`. Raises :class:`UnsafeInput` naming the file and the first problem.
    """
    name = label or path.name
    size = path.stat().st_size

    def bad(why: str) -> UnsafeInput:
        return UnsafeInput(f"{name} is not a valid safetensors file", why=why,
                           fix="re-download or re-save the weights (the file is truncated, damaged or not safetensors)")

    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise bad(f"it is {size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER or n > size - 8:
            raise bad(f"its header claims {n} bytes but the file holds {size - 8} after the length")
        text = f.read(n)
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"its header is not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    data_len = size - 8 - n
    spans: list[tuple[int, int, str]] = []
    params = 0
    for tensor, info in header.items():
        if tensor == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise bad("its __metadata__ is not a map of strings")
            continue
        if not isinstance(info, dict):
            raise bad(f"tensor {tensor!r} has no dtype/shape/offsets object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPE_BITS:
            raise bad(f"tensor {tensor!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise bad(f"tensor {tensor!r} has shape {shape!r}, not a list of non-negative integers")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets) or offsets[0] > offsets[1]):
            raise bad(f"tensor {tensor!r} has data_offsets {offsets!r}, not [begin, end] with 0 <= begin <= end")
        count = math.prod(shape)
        params += count
        if params > MAX_PARAMETERS:
            raise bad(f"its shapes claim more than {MAX_PARAMETERS:.0e} parameters")
        nbytes, rest = divmod(count * DTYPE_BITS[dtype], 8)
        if rest or offsets[1] - offsets[0] != nbytes:
            raise bad(f"tensor {tensor!r} ({dtype} {shape}) needs {count * DTYPE_BITS[dtype] / 8:g} bytes but its offsets span {offsets[1] - offsets[0]}")
        if offsets[1] > data_len:
            raise bad(f"tensor {tensor!r} ends at byte {offsets[1]} of a {data_len}-byte data section (truncated?)")
        spans.append((offsets[0], offsets[1], tensor))
    end = 0
    for begin, stop, tensor in sorted(spans):
        if begin != end:
            raise bad(f"tensor {tensor!r} starts at byte {begin}, " + ("overlapping the tensor before it" if begin < end else f"leaving a gap after byte {end}"))
        end = stop
    if end != data_len:
        raise bad(f"its tensors cover {end} of the {data_len} data bytes")
    return params


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of an HF folder: those named by ``model.safetensors.index.json``, else every ``*.safetensors``."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = {str(name) for name in weight_map.values()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UnsafeInput(f"{index} is not a valid safetensors index", why=f"it needs a weight_map object of file names ({type(exc).__name__})",
                              fix="re-download it, or delete it when the folder holds a single model.safetensors") from None
        return sorted({contained(folder, name) for name in names})
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
