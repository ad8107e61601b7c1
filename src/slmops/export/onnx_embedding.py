"""The token embedding of an int4 ONNX export at int8, and what an exported graph holds at which precision.

The model builder (onnxruntime-genai 0.18) quantizes an *untied* token embedding to 4 bits only
(``GatherBlockQuantized`` with ``bits=4``; it refuses an 8-bit override), and its ``k_quant`` and
``rtn`` methods leave it in float. So when ``mixed_precision`` keeps the LM head at int8 (on the
untied benchmark model: KL 3.55e-4 vs llama.cpp Q4_K_M 1.58e-3, ``benchmarks/onnx_precisions_untied.md``), :func:`int8_embedding`
gives the embedding the same treatment after the builder has run: the float ``Gather`` becomes a
``GatherBlockQuantized`` with ``bits=8`` (symmetric, one float scale per block, the uint8 data
offset by 128 as ONNX Runtime's default zero point expects), which ONNX Runtime runs on CPU and
CUDA.

A *tied* embedding (:func:`tied_embedding`) is read from the quantized LM head itself, with no
second copy: ``GatherBlockQuantized`` over the head's ``MatMulNBits`` weight, scales and zero
points (whatever their names, bits and block), sliced back to the hidden size when the head's rows
were padded to whole blocks. The builder can do this itself (``shared_embeddings``), but it writes
its ``GatherBlockQuantized`` into the *float* graph before quantizing, naming head initializers
that do not exist yet, so every export logged ``onnx_ir.serde: Input 'lm_head.MatMul.weight_Q8G32'
… The model is invalid`` (and with its default quantizer and an int8 head the names never came to
exist: the graph did not load). slmops builds with ``shared_embeddings=false`` — a float embedding
of its own, a valid graph at every step — and ties the two afterwards from what was really written.
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
    save_graph(model, out)
    return True


def save_graph(model: Any, out: Path) -> None:
    """Write ``model`` to ``out/model.onnx`` with its tensors in ``model.onnx.data`` (replacing both)."""
    onnx = _onnx()
    (out / DATA_FILE).unlink(missing_ok=True)
    onnx.save_model(model, str(out / MODEL_FILE), save_as_external_data=True, all_tensors_to_one_file=True, location=DATA_FILE,
                    size_threshold=1024)


def _attr(node: Any, name: str) -> int | None:
    return next((a.i for a in node.attribute if a.name == name), None)


def tied_embedding(out: Path) -> int | None:
    """Make the float token-embedding ``Gather`` of ``out/model.onnx`` read the quantized LM head; return its bits (``None``: not done).

    Nothing is changed (``None``) when there is no float embedding ``Gather``, no ``MatMulNBits``
    LM head, or their shapes differ (vocabulary × hidden size), so the caller can fall back to
    :func:`int8_embedding`.
    """
    onnx = _onnx()
    from onnx import helper, numpy_helper

    path = out / MODEL_FILE
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    found = next(((i, n) for i, n in enumerate(graph.node) if n.op_type == "Gather" and n.name.endswith(EMBED_SUFFIX)), None)
    head = next((n for n in graph.node if n.op_type == "MatMulNBits" and n.name.startswith("/lm_head/")), None)
    if found is None or head is None:
        return None
    index, gather = found
    inits = {t.name: t for t in graph.initializer}
    weight = inits.get(gather.input[0])
    bits, block, k, n = (_attr(head, a) for a in ("bits", "block_size", "K", "N"))
    qweight, scales = (inits.get(head.input[i]) for i in (1, 2))
    if weight is None or qweight is None or scales is None or None in (bits, block, k, n) or list(weight.dims) != [n, k]:
        return None
    if sum(gather.input[0] in x.input for x in graph.node) != 1:
        return None
    blocks = -(-k // block)
    prefix = gather.name[: -len("Gather")]

    def const(name: str, values: list[int]) -> str:
        graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), f"{prefix}{name}"))
        return f"{prefix}{name}"

    nodes = [helper.make_node("Reshape", [qweight.name, const("data_shape", [n, blocks * block * bits // 8])], [f"{prefix}Reshape/output_0"],
                              name=f"{prefix}Reshape")]
    scale_in = scales.name
    if list(scales.dims) != [n, blocks]:  # the default quantizer stores them flat
        nodes.append(helper.make_node("Reshape", [scales.name, const("scales_shape", [n, blocks])], [f"{prefix}ScalesReshape/output_0"],
                                      name=f"{prefix}ScalesReshape"))
        scale_in = f"{prefix}ScalesReshape/output_0"
    inputs = [f"{prefix}Reshape/output_0", gather.input[1], scale_in]
    zp = inits.get(head.input[3]) if len(head.input) > 3 and head.input[3] else None
    if zp is not None:
        zp_cols = -(-blocks * bits // 8)
        if list(zp.dims) != [n, zp_cols]:
            nodes.append(helper.make_node("Reshape", [zp.name, const("zp_shape", [n, zp_cols])], [f"{prefix}ZpReshape/output_0"],
                                          name=f"{prefix}ZpReshape"))
            inputs.append(f"{prefix}ZpReshape/output_0")
        else:
            inputs.append(zp.name)
    padded = blocks * block != k
    gathered = f"{prefix}GatherBlockQuantized/output_0" if padded else gather.output[0]
    nodes.append(helper.make_node("GatherBlockQuantized", inputs, [gathered], name=f"{prefix}GatherBlockQuantized", domain="com.microsoft",
                                  bits=bits, block_size=block, gather_axis=0, quantize_axis=1))
    if padded:  # the head's rows were padded to whole blocks: cut the embedding back to the hidden size
        nodes.append(helper.make_node("Slice", [gathered, const("start", [0]), const("end", [k]), const("axis", [-1])], list(gather.output),
                                      name=f"{prefix}Slice"))
    graph.node.remove(gather)
    for offset, node in enumerate(nodes):
        graph.node.insert(index + offset, node)
    graph.initializer.remove(weight)
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.load_external_data_for_model(model, str(out))
    save_graph(model, out)
    return bits


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
