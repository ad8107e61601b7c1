"""int4 on the source grid: MatMulNBits weights written exactly on the grid of the GGUF a model was dequantized from.

A model imported with ``models.from_gguf`` (``slmops models import x.gguf --to hf``) holds weights
that already lie on a quantization grid: a Q4_1 tensor is, per 32 weights of a row, ``d·q + m``
with ``q`` in 0..15 and two fp16 floats ``d`` and ``m``. Rounding those weights again onto another
int4 grid (symmetric, ``k_quant``…) adds a second rounding error of the same size as the first —
on SmolLM2-135M (a Q4_1 file) ONNX int4 kept 89% of the fp32 task accuracy at 4× the KL of
llama.cpp's Q4_K_M. Every such grid has an exact ``MatMulNBits`` form, ``(code − zero_point) ·
scale`` per block of 32 along the input dimension:

* ``Q4_0`` (``d·(q − 8)``): 4-bit codes ``q``, scales ``d``, the default zero point 8;
* ``Q4_1`` (``d·q + m``): 4-bit codes ``q``, scales ``d``, *float* zero points ``−m/d`` (ONNX
  Runtime takes zero points of the scales' type, unpacked, shape ``[N, blocks]``);
* ``Q8_0`` (``d·q``, ``q`` in −128..127): 8-bit codes ``q + 128``, scales ``d``, the default zero point 128.

:func:`write_source_grid` rewrites the exported graph after the model builder has run: each
``MatMulNBits`` whose weight (or, for the builder's packed ``qkv_proj``, each of whose q/k/v
weights) is such a tensor in the GGUF gets the GGUF's codes and scales, in the row order of the
Hugging Face model (q/k rows un-permuted as ``models.from_gguf`` does), and is checked against
the model's own weights before it is written; every other MatMul (Q6_K, Q5_0, F32 tensors, a
merged adapter's weights…) keeps the quantization plan's. :func:`source_gguf` finds the GGUF
through the model's lineage.
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
from slmops.export.onnx_embedding import MODEL_FILE, save_graph
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
    """One GGUF tensor's grid in MatMulNBits terms, rows in the Hugging Face order."""

    qtype: str
    bits: int
    codes: np.ndarray  # uint8 [rows, blocks, 32]: the unsigned codes
    scales: np.ndarray  # float32 [rows, blocks]
    zero: np.ndarray | None  # float32 [rows, blocks] (Q4_1), None: the default zero point 2^(bits-1)

    def zero_points(self) -> np.ndarray:
        """The zero points as floats (the default one where the type has none)."""
        return self.zero if self.zero is not None else np.full(self.scales.shape, float(1 << (self.bits - 1)), np.float32)

    def dequantize(self) -> np.ndarray:
        """The weights ``[rows, cols]`` as MatMulNBits computes them: ``(code − zero point) · scale``."""
        w = (self.codes.astype(np.float32) - self.zero_points()[..., None]) * self.scales[..., None]
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
        log.info("export.onnx: the merged adapter moves the weights off %s's grid; requantizing (--adapter-mode float keeps the base on it)", path.name)
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
    """The codes, scales and zero points of a ``Q4_0``/``Q4_1``/``Q8_0`` tensor's raw blocks (llama.cpp's ``block_q*`` layout)."""
    head = 4 if qtype == "Q4_1" else 2
    size = head + (BLOCK if qtype == "Q8_0" else BLOCK // 2)
    blocks = np.ascontiguousarray(raw).reshape(rows, -1, size)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = blocks[..., head:]
    if qtype == "Q8_0":
        return Grid(qtype, 8, (qs.view(np.int8).astype(np.int16) + 128).astype(np.uint8), d, None)
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # low nibbles are weights 0..15, high nibbles 16..31
    if qtype == "Q4_0":
        return Grid(qtype, 4, codes, d, None)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    zero = np.zeros_like(d)
    np.divide(-m, d, out=zero, where=d != 0)
    flat = d == 0  # every weight of the block is m: code 0, zero point -1, scale m
    codes[flat] = 0
    zero[flat] = -1.0
    d = np.where(flat, m, d)
    return Grid(qtype, 4, codes, d, zero)


def read_grids(path: Path) -> tuple[dict[str, Grid], dict[str, str]]:
    """``({HF weight name: Grid}, {HF weight name: GGUF type})`` of the GGUF at ``path``: the grids of its
    Q4_0/Q4_1/Q8_0 tensors (q/k rows un-permuted like ``models.from_gguf``), and every weight's type."""
    from slmops.export.gguf_arch import unpermute_rows
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
        if qtype not in SOURCE_TYPES:
            continue
        grid = _unpack(np.asarray(t.data), qtype, int(t.shape[-1]) if len(t.shape) > 1 else 1)
        heads = hp.num_heads if t.name.endswith(".attn_q.weight") else hp.num_kv_heads if t.name.endswith(".attn_k.weight") else 0
        if hp.spec.permute_qk and heads:
            grid.codes, grid.scales = unpermute_rows(grid.codes, heads), unpermute_rows(grid.scales, heads)
            grid.zero = None if grid.zero is None else unpermute_rows(grid.zero, heads)
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
    bits = {g.bits for g in parts}
    floats = any(g.zero is not None for g in parts)
    zero = np.concatenate([g.zero_points() for g in parts]) if floats else None
    return Grid("+".join(sorted({g.qtype for g in parts})), bits.pop(), np.concatenate([g.codes for g in parts]),
                np.concatenate([g.scales for g in parts]), zero)


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


def write_source_grid(out: Path, gguf_path: Path, src: Path, *, tied: bool, tied_embedding: bool) -> dict[str, Any]:
    """Put every MatMulNBits of ``out/model.onnx`` whose weights are Q4_0/Q4_1/Q8_0 in ``gguf_path`` on that grid; return facts.

    ``src`` is the Hugging Face folder that was exported (each rewritten weight is checked against
    it); ``tied``: the model's LM head is its token embedding; ``tied_embedding``: the embedding will
    be read from the head's quantized weight by a ``GatherBlockQuantized``, which takes no float zero
    points, so a Q4_1 head then keeps the plan's grid. Facts: ``matmuls`` written on the source grid,
    of ``total``, by ``types``, and ``kept`` (node → why it keeps the plan's grid).
    """
    onnx = require("onnx", extra="onnx", purpose="writing weights on the source grid")
    from onnx import numpy_helper

    grids, types = read_grids(gguf_path)
    weights = _Weights(src)
    model = onnx.load(str(out / MODEL_FILE), load_external_data=False)
    onnx.load_external_data_for_model(model, str(out))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    written: Counter[str] = Counter()
    kept: dict[str, str] = {}
    dropped: set[str] = set()
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
        dropped |= _rewrite(node, grid, inits, graph, numpy_helper)
        written[grid.qtype] += 1
    used = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name in dropped and t.name not in used]:
        graph.initializer.remove(t)
    save_graph(model, out)
    total = len(nodes)
    if kept:
        log.info("export.onnx: %d of %d MatMuls keep the quantization plan's grid, e.g. %s: %s", len(kept), total, *next(iter(kept.items())))
    return {"gguf": gguf_path.name, "matmuls": sum(written.values()), "total": total, "types": dict(written),
            "kept": dict(list(kept.items())[:16]), "kept_count": len(kept)}


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
    if tied_embedding and node.name.startswith("/lm_head/") and any(g.zero is not None for g in parts):
        return "the tied embedding's GatherBlockQuantized takes no float zero points"
    return None


def _rewrite(node: Any, grid: Grid, inits: dict[str, Any], graph: Any, numpy_helper: Any) -> set[str]:
    """Replace ``node``'s weight, scales and zero points by ``grid`` (initializer names kept, new ones added where missing);
    return the initializers it no longer reads."""
    codes = grid.codes
    packed = codes if grid.bits == 8 else (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
    scale_init = inits[node.input[2]]
    dtype = numpy_helper.to_array(scale_init).dtype
    base = node.input[1]
    _replace(graph, inits, base, packed)
    _replace(graph, inits, node.input[2], grid.scales.astype(dtype))
    inputs = list(node.input)
    old_zp = {inputs[3]} if len(inputs) > 3 and inputs[3] else set()
    if grid.zero is not None:
        zp_name = inputs[3] if len(inputs) > 3 and inputs[3] else f"{base}_zp"
        _replace(graph, inits, zp_name, grid.zero.astype(dtype))
        inputs = inputs[:3] + [zp_name] + inputs[4:]
    elif len(inputs) > 4:
        inputs[3] = ""
    else:
        inputs = inputs[:3]
    del node.input[:]
    node.input.extend(inputs)
    _set_attr(node, "bits", grid.bits)
    _set_attr(node, "block_size", BLOCK)
    return old_zp - set(inputs)


def _replace(graph: Any, inits: dict[str, Any], name: str, value: np.ndarray) -> None:
    from onnx import numpy_helper

    new = numpy_helper.from_array(np.ascontiguousarray(value), name)
    old = inits.get(name)
    if old is not None:
        old.CopyFrom(new)
    else:
        graph.initializer.append(new)
        inits[name] = graph.initializer[-1]
