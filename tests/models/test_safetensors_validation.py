"""``models import`` validates the whole structure of every safetensors file before anything is stored.

Each damaged file is built byte by byte (header length, JSON header, data), the way a truncated
download or a hostile upload would look; the import must stop with one line naming the file and
leave nothing in the store, while files written by the real ``safetensors`` library pass.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from slmops.errors import UnsafeInput
from slmops.models.weights import validate_safetensors


def blob(tensors: dict[str, tuple[str, list[int], list[int]]], data_len: int, *, header: bytes | None = None) -> bytes:
    head = header if header is not None else json.dumps(
        {name: {"dtype": d, "shape": s, "data_offsets": o} for name, (d, s, o) in tensors.items()}).encode()
    return struct.pack("<Q", len(head)) + head + bytes(range(256)) * (data_len // 256) + bytes(data_len % 256)


GOOD = blob({"a": ("F32", [2, 2], [0, 16]), "b": ("F32", [2, 2], [16, 32])}, 32)

BAD = {
    "offsets past the end": (blob({"a": ("F32", [2, 2], [0, 16]), "b": ("F32", [2, 4], [16, 48])}, 32), "ends at byte 48"),
    "1.1T parameters": (blob({"a": ("F32", [1_100_000, 1_000_000], [0, 4_400_000_000_000])}, 16), "parameters"),
    "truncated": (GOOD[:-7], "ends at byte 32"),
    "overlapping": (blob({"a": ("F32", [2, 2], [0, 16]), "b": ("F32", [2, 2], [8, 24])}, 24), "overlapping"),
    "gap": (blob({"a": ("F32", [2, 2], [0, 16]), "b": ("F32", [2, 2], [20, 36])}, 36), "gap"),
    "trailing bytes": (blob({"a": ("F32", [2, 2], [0, 16])}, 40), "cover 16 of the 40"),
    "shape vs span": (blob({"a": ("F32", [3, 3], [0, 16])}, 16), "needs 36 bytes"),
    "unknown dtype": (blob({"a": ("F33", [2, 2], [0, 16])}, 16), "unknown dtype"),
    "negative dim": (blob({"a": ("F32", [-2, -2], [0, 16])}, 16), "non-negative"),
    "header not JSON": (blob({}, 0, header=b"{not json"), "not valid JSON"),
    "duplicate names": (blob({}, 32, header=b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, '
                                           b'"a": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]}}'), "named twice"),
    "header longer than file": (struct.pack("<Q", 1 << 20) + b"{}", "header claims"),
    "shorter than a header": (b"\x01\x02", "shorter than"),
}


def model_folder(root: Path, weights: bytes) -> Path:
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 4}))
    (root / "model.safetensors").write_bytes(weights)
    return root


def test_files_written_by_safetensors_pass(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    f = tmp_path / "x.safetensors"
    save_file({"w": np.ones((3, 5), np.float32), "h": np.zeros(7, np.float16), "i": np.arange(4, dtype=np.int64),
               "e": np.zeros((0, 3), np.float32), "b": np.ones(3, np.bool_)}, str(f), metadata={"format": "pt"})
    assert validate_safetensors(f) == 15 + 7 + 4 + 0 + 3
    assert validate_safetensors(model_folder(tmp_path / "m", GOOD) / "model.safetensors") == 8


@pytest.mark.parametrize("case", sorted(BAD))
def test_damaged_files_are_refused(tmp_path: Path, case: str) -> None:
    data, why = BAD[case]
    f = tmp_path / "model.safetensors"
    f.write_bytes(data)
    with pytest.raises(UnsafeInput, match="not a valid safetensors file") as info:
        validate_safetensors(f)
    assert why in info.value.message and "\n" not in info.value.message


def test_import_refuses_damaged_weights_and_stores_nothing(cli, store, tmp_path: Path) -> None:
    ok = cli("models", "import", str(model_folder(tmp_path / "good", GOOD)), "--name", "good", "--json")
    assert ok.code == 0, ok.err
    assert ok.json["meta"]["parameters"] == 8
    for case in ("offsets past the end", "1.1T parameters", "truncated"):
        folder = model_folder(tmp_path / case.replace(" ", "-"), BAD[case][0])
        r = cli("models", "import", str(folder), "--name", "bad")
        assert r.code == 1, (case, r.out)
        lines = r.err.strip().splitlines()
        assert len(lines) == 1 and "model.safetensors" in lines[0] and "not a valid safetensors file" in lines[0], (case, r.err)
        assert "Traceback" not in r.err
    assert [row["name"] for row in store.artifacts_list(named_only=False)] == ["good"]
    assert list(store.tmp.iterdir()) == []  # nothing half-written left behind either
