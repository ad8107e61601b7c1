"""int4 on the source grid: MatMulNBits weights written exactly on the grid of the GGUF a model was dequantized from.

A model imported with ``models.from_gguf`` (``slmops models import x.gguf --to hf``) holds weights
that already lie on a quantization grid: a Q4_1 tensor is, per 32 weights of a row, ``d·q + m``
with ``q`` in 0..15 and two fp16 floats ``d`` and ``m``. Rounding those weights again onto another
int4 grid (symmetric, ``k_quant``…) adds a second rounding error of the same size as the first —
on SmolLM2-135M (a Q4_1 file) ONNX int4 kept 89% of the fp32 task accuracy at 4× the KL of
llama.cpp's Q4_K_M. Each such grid has an exact form in ``MatMulNBits``, which computes
``(code − zero point) · scale`` per block of 32 weights along the input dimension:

* ``Q4_0`` (``d·(q − 8)``): 4-bit codes ``q``, scales ``d``, the default zero point 8;
* ``Q8_0`` (``d·q``, ``q`` in −128..127): 8-bit codes ``q + 128``, scales ``d``, the default zero point 128;
* ``Q4_1`` (``d·q + m``): 4-bit codes ``q``, scales ``d``, zero point 0, and the offsets ``m`` as a
  small float branch beside it: ``x·Wᵀ = MatMulNBits(x) + (x·S)·Mᵀ``, where ``x·S`` sums ``x`` per
  block of 32 (``S`` a 0/1 ``[K, K/32]`` matrix, shared by MatMuls of one input) and ``M`` holds
  the fp16 offsets ``[K/32, N]``. ONNX Runtime also takes *float* zero points (``−m/d``), but its CPU
  kernel then dequantizes the whole weight on every call: 40× slower at decode (12 ms against
  0.3 ms for a 576×1536 MatMul, one thread), while the branch costs two MatMuls of width K/32.

:func:`write_source_grid` rewrites the exported graph after the model builder has run: each
``MatMulNBits`` whose weight (or, for the builder's packed ``qkv_proj``, each of whose q/k/v
weights) is such a tensor in the GGUF gets the GGUF's codes and scales, in the row order of the
Hugging Face model (q/k rows un-permuted as ``models.from_gguf`` does), and is checked against
the model's own weights before it is written; every other MatMul (Q6_K, Q5_0, F32 tensors…)
keeps the quantization plan's. :func:`choose_source_grid` finds the GGUF through the model's
lineage and applies ``weight_grid``.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slmops._optional import require
from slmops.errors import ConfigError
from slmops.export.onnx_embedding import EMBED_SUFFIX, MODEL_FILE, save_graph
from slmops.store.artifact import Artifact

if TYPE_CHECKING:
    from slmops.export.onnx import OnnxExportConfig

log = logging.getLogger("slmops.export.onnx")

#: GGUF tensor types with an exact MatMulNBits form, and their bits.
SOURCE_TYPES: dict[str, int] = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}
BLOCK = 32
_NODE = re.compile(r"^/model/layers\.(\d+)/(attn|mlp)/(\w+)/MatMul")
_PARTS = {"qkv_proj": ("q_proj", "k_proj", "v_proj")}
_GROUPS = {"attn": "self_attn", "mlp": "mlp"}


@dataclass
class Grid:
    """One GGUF tensor's grid in MatMulNBits terms, rows in the Hugging Face order: ``(codes − zero) · scales + offsets``."""

    qtype: str
    bits: int
    codes: np.ndarray  # uint8 [rows, blocks, 32]: the unsigned codes
    scales: np.ndarray  # float32 [rows, blocks] (fp16 values)
    zero: int  # the zero point of every block
    offsets: np.ndarray | None = None  # float32 [rows, blocks] (fp16 values), Q4_1's m

    def packed(self) -> np.ndarray:
        """The codes as MatMulNBits stores them: ``[rows, blocks, 32 · bits / 8]`` bytes, two 4-bit codes a byte, low nibble first."""
        return self.codes if self.bits == 8 else (self.codes[..., 0::2] | (self.codes[..., 1::2] << 4)).astype(np.uint8)

    def dequantize(self) -> np.ndarray:
        """The weights ``[rows, cols]`` the grid stands for (in the ``gguf`` library's order of operations)."""
        w = (self.codes.astype(np.float32) - np.float32(self.zero)) * self.scales[..., None] if self.zero else self.scales[..., None] * self.codes
        if self.offsets is not None:
            w = w + self.offsets[..., None]
        return w.reshape(w.shape[0], -1)


def source_gguf(model: Artifact, store: Any) -> Path | None:
    """The GGUF file ``model`` was dequantized from (a ``models.from_gguf`` output), else ``None``."""
    if model.manifest.stage is None or model.manifest.stage.name != "models.from_gguf":
        return None
    parent = next((p.digest for p in model.manifest.parents if p.role == "model"), None)
    if parent is None or not store.exists(parent):
        log.warning("export.onnx: %s was dequantized from GGUF sha256:%s, which is not in the store; requantizing", model.short, (parent or "?")[:12])
        return None
    from slmops.models.gguf_import import gguf_file_of

    return gguf_file_of(store.get(parent))


def choose_source_grid(cfg: OnnxExportConfig, model: Artifact, store: Any, *, merged: bool) -> Path | None:
    """The GGUF whose grid ``export.onnx`` writes the weights on (``cfg.weight_grid``), else ``None`` (requantize).

    ``auto`` takes the source grid for an int4/int8 CPU export of a model dequantized from a GGUF
    with Q4_0/Q4_1/Q8_0 weights, unless an adapter is merged into them (``merged``): merged weights
    are off every grid. ``source`` refuses what ``auto`` would quietly requantize.
    """
    if cfg.precision not in ("int4", "int8") or cfg.weight_grid == "requantize":
        return None
    path = source_gguf(model, store)
    explicit = cfg.weight_grid == "source"
    if path is None or not has_source_grid(path):
        if explicit:
            raise ConfigError(
                f"--weight-grid source: {model.short} has no GGUF grid to keep",
                why="it was not dequantized from a GGUF by models.from_gguf" if path is None
                else f"{path.name} holds no Q4_0, Q4_1 or Q8_0 weights (only those have an exact MatMulNBits form)",
                fix="drop --weight-grid (or use requantize); import a GGUF with `slmops models import FILE.gguf --to hf` to export it on its grid",
            )
        return None
    if merged:
        if explicit:
            raise ConfigError("--weight-grid source cannot keep the GGUF's grid with the adapter merged in",
                              why="merging adds the LoRA's update to every weight, which moves it off the grid",
                              fix="use --adapter-mode float (the LoRA as float branches beside the base on its grid) or --weight-grid requantize")
        log.warning("export.onnx: the merged adapter moves the weights off %s's grid, so they are rounded again; --adapter-mode float keeps "
                    "the base on it exactly", path.name)
        return None
    if cfg.execution_provider != "cpu" and not explicit:
        return None
    return path


def source_types(path: Path) -> dict[str, int]:
    """How many tensors of each type the GGUF holds (``{"Q4_1": 210, "F32": 61, "Q8_0": 1}``)."""
    from slmops.models.gguf_file import open_gguf

    return open_gguf(path).tensor_types()


def has_source_grid(path: Path) -> bool:
    """Whether any weight of the GGUF at ``path`` lies on a grid MatMulNBits can hold exactly."""
    return any(t in SOURCE_TYPES for t in source_types(path))


def _unpack(raw: np.ndarray, qtype: str, rows: int) -> Grid:
    """The codes, scales and offsets of a ``Q4_0``/``Q4_1``/``Q8_0`` tensor's raw blocks (llama.cpp's ``block_q*`` layout)."""
    head = 4 if qtype == "Q4_1" else 2
    size = head + (BLOCK if qtype == "Q8_0" else BLOCK // 2)
    blocks = np.ascontiguousarray(raw).reshape(rows, -1, size)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = blocks[..., head:]
    if qtype == "Q8_0":
        return Grid(qtype, 8, (qs.view(np.int8).astype(np.int16) + 128).astype(np.uint8), d, 128)
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # low nibbles are weights 0..15, high nibbles 16..31
    if qtype == "Q4_0":
        return Grid(qtype, 4, codes, d, 8)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    return Grid(qtype, 4, codes, d, 0, m)


def read_grids(path: Path) -> tuple[dict[str, Grid], dict[str, str]]:
    """``({HF weight name: Grid}, {HF weight name: GGUF type})`` of the GGUF at ``path``: the grids of its
    Q4_0/Q4_1/Q8_0 tensors (q/k rows un-permuted like ``models.from_gguf``), and every weight's type."""
    from slmops.models.gguf_arch import unpermute_rows
    from slmops.models.gguf_config import read_gguf_hparams
    from slmops.models.gguf_file import open_gguf
    from slmops.models.gguf_weights import hf_tensor_name

    f = open_gguf(path)
    hp = read_gguf_hparams(f)
    grids: dict[str, Grid] = {}
    types: dict[str, str] = {}
    for t in f.tensors:
        if not t.name.endswith(".weight") or t.name == "rope_freqs.weight":
            continue
        name, qtype = hf_tensor_name(t.name, hp), t.tensor_type.name
        types[name] = qtype
        if qtype not in SOURCE_TYPES or len(t.shape) != 2:
            continue
        grid = _unpack(np.asarray(t.data), qtype, int(t.shape[1]))
        heads = hp.num_heads if t.name.endswith(".attn_q.weight") else hp.num_kv_heads if t.name.endswith(".attn_k.weight") else 0
        if hp.spec.permute_qk and heads:
            grid.codes, grid.scales = unpermute_rows(grid.codes, heads), unpermute_rows(grid.scales, heads)
            grid.offsets = None if grid.offsets is None else unpermute_rows(grid.offsets, heads)
        grids[name] = grid
    return grids, types


def node_weights(node_name: str, tied: bool) -> list[str] | None:
    """The Hugging Face weights a builder MatMul multiplies by, in row order (``None``: not a projection this knows)."""
    if node_name.startswith("/lm_head/"):
        return ["model.embed_tokens.weight" if tied else "lm_head.weight"]
    m = _NODE.match(node_name)
    if m is None or m.group(2) not in _GROUPS:
        return None
    layer, group, proj = m.group(1), _GROUPS[m.group(2)], m.group(3)
    return [f"model.layers.{layer}.{group}.{p}.weight" for p in _PARTS.get(proj, (proj,))]


def _concat(parts: list[Grid]) -> Grid:
    """One grid for the builder's packed q/k/v: rows stacked; with any offsets, every part at zero point 0 plus offsets."""
    if len(parts) == 1:
        return parts[0]
    qtype = "+".join(sorted({g.qtype for g in parts}))
    if all(g.offsets is None and g.zero == parts[0].zero for g in parts):
        return Grid(qtype, parts[0].bits, np.concatenate([g.codes for g in parts]), np.concatenate([g.scales for g in parts]), parts[0].zero)
    offsets = [g.offsets if g.offsets is not None else -np.float32(g.zero) * g.scales for g in parts]  # Q4_0: d·(q − 8) = d·q − 8d
    return Grid(qtype, parts[0].bits, np.concatenate([g.codes for g in parts]), np.concatenate([g.scales for g in parts]), 0,
                np.concatenate(offsets))


def _attr(node: Any, name: str) -> int | None:
    return next((a.i for a in node.attribute if a.name == name), None)


def _set_attr(node: Any, name: str, value: int) -> None:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            a.i = value
            return
    node.attribute.append(helper.make_attribute(name, value))


class _Weights:
    """The model's own float weights (safetensors), read one tensor at a time for the check."""

    dtype = "torch.float32"

    def __init__(self, src: Path) -> None:
        st = require("safetensors", extra="onnx", purpose="checking the source grid against the model's weights")
        self._files: dict[str, Path] = {}
        for path in sorted(src.glob("*.safetensors")):
            with st.safe_open(str(path), framework="pt") as fh:
                self._files.update({k: path for k in fh.keys()})  # noqa: SIM118 (safe_open is no dict)
        self._st = st

    def get(self, name: str) -> np.ndarray | None:
        path = self._files.get(name)
        if path is None:
            return None
        with self._st.safe_open(str(path), framework="pt") as fh:
            t = fh.get_tensor(name)
            self.dtype = str(t.dtype)
            return t.float().numpy()


def _check(grid: Grid, names: list[str], weights: _Weights) -> str | None:
    """Why the grid is not the model's weights (``None``: it is, to the model's own dtype rounding)."""
    parts = [weights.get(n) for n in names]
    if any(p is None for p in parts):
        return "the model has no such weight"
    w = np.concatenate(parts)  # type: ignore[arg-type]
    g = grid.dequantize()
    if g.shape != w.shape:
        return f"shape {g.shape} is not the model's {w.shape}"
    err = float(np.max(np.abs(g - w))) if w.size else 0.0
    tol = (1e-5 if weights.dtype == "torch.float32" else 1e-2) * float(np.max(np.abs(w)) or 1.0)
    return None if err <= tol else f"the model's weights differ from the GGUF's by up to {err:.3g} (not a plain dequantized copy)"


def _why_not(node: Any, names: list[str] | None, grids: dict[str, Grid], types: dict[str, str], tied_embedding: bool) -> str | None:
    """Why ``node`` cannot go on the source grid (``None``: it can)."""
    if names is None:
        return "not a projection of the model's weights"
    missing = [n for n in names if n not in grids]
    if missing:
        return f"{missing[0]} is {types.get(missing[0], 'not in the GGUF')}, which has no exact MatMulNBits form"
    parts = [grids[n] for n in names]
    if len({g.bits for g in parts}) > 1:
        return "its packed weights mix 4- and 8-bit types"
    k, n = _attr(node, "K"), _attr(node, "N")
    rows, cols = sum(g.codes.shape[0] for g in parts), parts[0].codes.shape[1] * BLOCK
    if (k, n) != (cols, rows):
        return f"K={k}, N={n} is not the GGUF's {cols} x {rows}"
    if tied_embedding and node.name.startswith("/lm_head/") and any(g.offsets is not None for g in parts):
        return "the tied embedding's GatherBlockQuantized cannot add Q4_1's offsets"
    return None


def write_source_grid(out: Path, gguf_path: Path, src: Path, *, tied: bool, tied_embedding: bool, embedding: bool = False,
                      accuracy_level: int | None = None) -> dict[str, Any]:
    """Put every MatMulNBits of ``out/model.onnx`` whose weights are Q4_0/Q4_1/Q8_0 in ``gguf_path`` on that grid; return facts.

    ``src`` is the Hugging Face folder that was exported (each rewritten weight is checked against
    it); ``tied``: the model's LM head is its token embedding; ``tied_embedding``: the embedding will
    be read from the head's quantized weight by a ``GatherBlockQuantized`` (which cannot add
    offsets, so a Q4_1 head then keeps the plan's grid); ``embedding``: put an untied float token
    embedding on its Q8_0/Q4_0 grid too (a ``GatherBlockQuantized``). Facts: ``matmuls`` written on
    the source grid, of ``total``, by ``types``, ``offsets`` (MatMuls with a Q4_1 offset branch),
    ``embedding`` (its GGUF type when it went onto the grid), ``accuracy_level`` of the 4-bit MatMuls
    on the grid and ``kept`` (node → why it keeps the plan's grid).

    ``accuracy_level`` ``None`` (none asked for) gives the 4-bit MatMuls on the grid fp32 activations
    (level 1), so they compute the source model exactly: at the CPU default (4, int8 activations)
    SmolLM2-135M lost 7% of its task accuracy on an otherwise exact graph (KL 0.026; 7.8e-4 at level
    1). 8-bit MatMuls (a Q8_0 LM head) keep the builder's level: ONNX Runtime 1.32's 8-bit kernel at
    level 1 is 100× slower (209 ms against 1.9 ms for SmolLM2's 576×49152 head, one thread).
    """
    onnx = require("onnx", extra="onnx", purpose="writing weights on the source grid")

    grids, types = read_grids(gguf_path)
    weights = _Weights(src)
    model = onnx.load(str(out / MODEL_FILE), load_external_data=False)
    onnx.load_external_data_for_model(model, str(out))
    graph = model.graph
    edit = _GraphEdit(graph)
    written: Counter[str] = Counter()
    kept: dict[str, str] = {}
    nodes = [n for n in graph.node if n.op_type == "MatMulNBits" and "/lora_" not in n.name]
    for node in nodes:
        names = node_weights(node.name, tied)
        why = _why_not(node, names, grids, types, tied_embedding)
        grid = None if why else _concat([grids[n] for n in names])  # type: ignore[union-attr]
        if grid is not None:
            why = _check(grid, names, weights)  # type: ignore[arg-type]
        if why or grid is None:
            kept[node.name] = why or "no grid"
            continue
        edit.rewrite(node, grid)
        if accuracy_level is None and grid.bits == 4:
            _set_attr(node, "accuracy_level", 1)
        written[grid.qtype] += 1
    embedded = _embedding(graph, edit, grids, weights) if embedding and not tied else None
    edit.finish()
    save_graph(model, out)
    if kept:
        log.info("export.onnx: %d of %d MatMuls keep the quantization plan's grid, e.g. %s: %s", len(kept), len(nodes), *next(iter(kept.items())))
    return {"gguf": gguf_path.name, "matmuls": sum(written.values()), "total": len(nodes), "types": dict(written),
            "offsets": edit.offsets, "embedding": embedded, "accuracy_level": accuracy_level or 1, "kept": dict(list(kept.items())[:16]), "kept_count": len(kept)}


def _embedding(graph: Any, edit: _GraphEdit, grids: dict[str, Grid], weights: _Weights) -> str | None:
    """Replace the float token-embedding ``Gather`` by a ``GatherBlockQuantized`` on its Q8_0/Q4_0 grid; its type, or ``None``."""
    from onnx import helper

    name = "model.embed_tokens.weight"
    grid = grids.get(name)
    found = next(((i, n) for i, n in enumerate(graph.node) if n.op_type == "Gather" and n.name.endswith(EMBED_SUFFIX)), None)
    if grid is None or grid.offsets is not None or found is None or found[1].input[0] not in edit.inits:
        return None
    if sum(found[1].input[0] in n.input for n in graph.node) != 1 or _check(grid, [name], weights):
        return None
    index, gather = found
    codes, packed = grid.codes, grid.packed()
    data, scales = f"{gather.input[0]}_Q{grid.bits}G{BLOCK}", f"{gather.input[0]}_scale"
    edit.put(data, packed.reshape(codes.shape[0], -1))
    edit.put(scales, grid.scales)
    edit.dropped.add(gather.input[0])
    node = helper.make_node("GatherBlockQuantized", [data, gather.input[1], scales], list(gather.output), domain="com.microsoft",
                            name=gather.name[: -len("Gather")] + "GatherBlockQuantized", bits=grid.bits, block_size=BLOCK, gather_axis=0, quantize_axis=1)
    graph.node.remove(gather)
    graph.node.insert(index, node)
    return grid.qtype


class _GraphEdit:
    """Rewrites MatMulNBits nodes of one graph in place; new nodes go right after the node they serve."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph
        self.inits = {t.name: t for t in graph.initializer}
        self.dropped: set[str] = set()
        self.block_sums: dict[str, str] = {}  # activation → its sums per block of 32
        self.after: dict[str, list[Any]] = {}  # node name → nodes to insert after it
        self.offsets = 0

    def rewrite(self, node: Any, grid: Grid) -> None:
        """Put ``node`` on ``grid``: codes, scales and zero points replaced (names kept, the block size in them updated)."""
        codes, packed = grid.codes, grid.packed()
        from onnx import numpy_helper

        dtype = numpy_helper.to_array(self.inits[node.input[2]]).dtype
        inputs = list(node.input)
        self.dropped |= {inputs[1]} | ({inputs[3]} if len(inputs) > 3 and inputs[3] else set())
        inputs[1] = re.sub(r"_Q\d+G\d+$", "", inputs[1]) + f"_Q{grid.bits}G{BLOCK}"
        self.put(inputs[1], packed)
        self.put(inputs[2], grid.scales.astype(dtype))
        zp_name = f"{inputs[1]}_zp"
        if grid.zero != 1 << (grid.bits - 1):  # not the default: packed like MatMulNBits' own (two 4-bit points a byte)
            per_row = -(-codes.shape[1] * grid.bits // 8)
            self.put(zp_name, np.full((codes.shape[0], per_row), grid.zero * (0x11 if grid.bits == 4 else 1), np.uint8))
            inputs = inputs[:3] + [zp_name] + inputs[4:]
        else:
            inputs = inputs[:3] + ([""] + inputs[4:] if len(inputs) > 4 else [])
        del node.input[:]
        node.input.extend(inputs)
        _set_attr(node, "bits", grid.bits)
        _set_attr(node, "block_size", BLOCK)
        if grid.offsets is not None:
            self._offset_branch(node, grid)

    def _offset_branch(self, node: Any, grid: Grid) -> None:
        """``node``'s output += (x·S)·Mᵀ: the block sums of its input times the offsets (fp16, cast once at load)."""
        from onnx import TensorProto, helper

        x, out, prefix = node.input[0], node.output[0], node.name.rsplit("/", 1)[0] + "/grid_offsets"
        k = grid.codes.shape[1] * BLOCK
        new: list[Any] = []
        sums = self.block_sums.get(x)
        if sums is None:
            sums_w = f"source_grid.block_sum_{k}"
            if sums_w not in self.inits:
                s = np.zeros((k, k // BLOCK), np.float32)
                s[np.arange(k), np.arange(k) // BLOCK] = 1.0
                self.put(sums_w, s)
            sums = self.block_sums[x] = f"{prefix}/BlockSum/output_0"
            new.append(helper.make_node("MatMul", [x, sums_w], [sums], name=f"{prefix}/BlockSum"))
        offsets = f"{node.input[1]}_offsets"
        self.put(offsets, np.ascontiguousarray(grid.offsets.T).astype(np.float16))  # type: ignore[union-attr]
        main = f"{prefix}/main_output_0"
        node.output[0] = main
        new += [helper.make_node("Cast", [offsets], [f"{prefix}/Cast/output_0"], name=f"{prefix}/Cast", to=TensorProto.FLOAT),
                helper.make_node("MatMul", [sums, f"{prefix}/Cast/output_0"], [f"{prefix}/MatMul/output_0"], name=f"{prefix}/MatMul"),
                helper.make_node("Add", [main, f"{prefix}/MatMul/output_0"], [out], name=f"{prefix}/Add")]
        self.after[node.name] = new
        self.offsets += 1

    def put(self, name: str, value: np.ndarray) -> None:
        """Set initializer ``name`` to ``value`` (replaced in place, or added)."""
        from onnx import numpy_helper

        new = numpy_helper.from_array(np.ascontiguousarray(value), name)
        old = self.inits.get(name)
        if old is not None:
            old.CopyFrom(new)
        else:
            self.graph.initializer.append(new)
            self.inits[name] = self.graph.initializer[-1]

    def finish(self) -> None:
        """Insert the new nodes and drop the initializers no node reads any more."""
        if self.after:
            nodes = list(self.graph.node)
            del self.graph.node[:]
            for n in nodes:
                self.graph.node.append(n)
                self.graph.node.extend(self.after.get(n.name, []))
        used = {i for n in self.graph.node for i in n.input}
        for t in [t for t in self.graph.initializer if t.name in self.dropped and t.name not in used]:
            self.graph.initializer.remove(t)
