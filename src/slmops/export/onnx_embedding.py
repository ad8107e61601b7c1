"""The token embedding of an int4 ONNX export at int8, and what an exported graph holds at which precision.

The model builder (onnxruntime-genai 0.18) quantizes an *untied* token embedding to 4 bits only
(``GatherBlockQuantized`` with ``bits=4``; it refuses an 8-bit override), and its ``k_quant`` and
``rtn`` methods leave it in float. So when ``mixed_precision`` keeps the LM head at int8 (on the
untied benchmark model: KL 3.55e-4 vs llama.cpp Q4_K_M 1.58e-3, ``benchmarks/onnx_precisions_untied.md``), :func:`int8_embedding`
gives the embedding the same treatment after the builder has run: the float ``Gather`` becomes a
``GatherBlockQuantized`` with ``bits=8`` (symmetric, one float scale per block, the uint8 data
offset by 128 as ONNX Runtime's default zero point expects), which ONNX Runtime runs on CPU and
CUDA. A tied embedding needs none of this: the builder reads it from the int8 LM head itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from slmops._optional import require

MODEL_FILE, DATA_FILE = "model.onnx", "model.onnx.data"
EMBED_SUFFIX = "/embed_tokens/Gather"


def _onnx() -> Any:
    return require("onnx", extra="onnx", purpose="rewriting the exported graph")


def quantize_rows_int8(w: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 data [rows, cols], scales [rows, cols / block])``: symmetric int8 per block of a row, offset by 128."""
    rows, cols = w.shape
    blocks = w.astype(np.float32).reshape(rows, cols // block, block)
    scales = np.abs(blocks).max(axis=-1) / 127.0
    scales[scales == 0] = 1.0
    q = np.clip(np.rint(blocks / scales[..., None]), -127, 127) + 128
    return q.astype(np.uint8).reshape(rows, cols), scales


def int8_embedding(out: Path, block: int) -> bool:
    """Turn the float token-embedding ``Gather`` of ``out/model.onnx`` into an int8 ``GatherBlockQuantized``; ``False`` if there is none.

    ``block`` is used when it divides the hidden size, else the largest of 128/64/32/16 that does
    (else one block per row). The whole graph is rewritten to ``model.onnx`` + ``model.onnx.data``.
    """
    onnx = _onnx()
    from onnx import helper, numpy_helper

    path = out / MODEL_FILE
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    found = next(((i, n) for i, n in enumerate(graph.node) if n.op_type == "Gather" and n.name.endswith(EMBED_SUFFIX)), None)
    if found is None:
        return False
    index, node = found
    weight = next((t for t in graph.initializer if t.name == node.input[0]), None)
    users = sum(node.input[0] in n.input for n in graph.node)
    if weight is None or len(weight.dims) != 2 or users != 1:
        return False
    onnx.load_external_data_for_model(model, str(out))
    w = numpy_helper.to_array(weight)
    cols = w.shape[1]
    block = next((b for b in (block, 128, 64, 32, 16) if cols % b == 0), cols)
    data, scales = quantize_rows_int8(w, block)
    name = node.input[0]
    graph.initializer.remove(weight)
    graph.initializer.extend([numpy_helper.from_array(data, f"{name}_Q8G{block}"), numpy_helper.from_array(scales.astype(w.dtype), f"{name}_scale")])
    gather = helper.make_node("GatherBlockQuantized", [f"{name}_Q8G{block}", node.input[1], f"{name}_scale"], list(node.output),
                              name=node.name[: -len("Gather")] + "GatherBlockQuantized", domain="com.microsoft",
                              bits=8, block_size=block, gather_axis=0, quantize_axis=1)
    graph.node.remove(node)
    graph.node.insert(index, gather)
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    (out / DATA_FILE).unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=DATA_FILE, size_threshold=1024)
    return True


def quantized_layout(out: Path) -> dict[str, Any]:
    """What ``out/model.onnx`` holds: the MatMulNBits nodes at 8 bits, and the token embedding's precision (int4/int8/float)."""
    onnx = _onnx()
    path = out / MODEL_FILE
    if not path.is_file():
        return {"int8_matmuls": [], "embedding": None}
    graph = onnx.load(str(path), load_external_data=False).graph

    def bits(node: Any) -> int | None:
        return next((a.i for a in node.attribute if a.name == "bits"), None)

    int8 = [n.name for n in graph.node if n.op_type == "MatMulNBits" and bits(n) == 8]
    embed = next((n for n in graph.node if "/embed_tokens/" in n.name and n.op_type in ("Gather", "GatherBlockQuantized")), None)
    embedding = None if embed is None else "float" if embed.op_type == "Gather" else f"int{bits(embed) or 4}"
    return {"int8_matmuls": int8, "embedding": embedding}
