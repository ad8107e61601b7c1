"""The quantization plan of an ONNX export: which algorithm, block size and mixed precision the builder gets.

:func:`plan_quantization` turns an :class:`~slmops.export.onnx.OnnxExportConfig` and the model's
``config.json`` into what ``export.onnx`` builds (recorded in the artifact's ``meta.quantization``);
:func:`builder_options` and :func:`target_options` turn that plan into onnxruntime-genai's
``--extra_options`` and structured ``target_options``. The int4 default keeps the LM head, the
embedding and the first layers' attention projections at int8 (``first_last``): no worse than
llama.cpp's Q4_K_M in KL on the benchmark model while under 30% of fp16 (docs/export.md).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmops._optional import require
from slmops.errors import ConfigError

if TYPE_CHECKING:
    from slmops.export.onnx import OnnxExportConfig

log = logging.getLogger("slmops.export.onnx")

#: int4 block sizes tried, largest first, when none is given (128: the size/accuracy optimum on the benchmark model).
INT4_BLOCKS: tuple[int, ...] = (128, 64, 32, 16)


def matmul_input_sizes(model_cfg: dict[str, Any]) -> list[int]:
    """The input widths (K) of a decoder's MatMuls: hidden size, attention output width, MLP width."""
    hidden, inter, heads = (int(model_cfg.get(k) or 0) for k in ("hidden_size", "intermediate_size", "num_attention_heads"))
    head_dim = int(model_cfg.get("head_dim") or (hidden // heads if heads else 0))
    return sorted({k for k in (hidden, inter, heads * head_dim) if k > 0})


def _odd_block_counts(sizes: list[int], block: int) -> list[int]:
    return [k for k in sizes if math.ceil(k / block) % 2]


def tied_embeddings(src: Path, model_cfg: dict[str, Any]) -> bool:
    """Whether the model ties its token embedding to its LM head (``config.json``, else transformers' default for the class)."""
    if "tie_word_embeddings" in model_cfg:
        return bool(model_cfg["tie_word_embeddings"])
    transformers = require("transformers", extra="onnx", purpose="reading the model config")
    return bool(getattr(transformers.AutoConfig.from_pretrained(str(src)), "tie_word_embeddings", False))


def plan_quantization(cfg: OnnxExportConfig, model_cfg: dict[str, Any], *, tied: bool, runtime_adapter: bool = False) -> dict[str, Any]:
    """The quantization ``export.onnx`` builds: ``algo``, ``block_size``, ``symmetric``, ``mixed_precision``, ``embedding``; ``{}`` for fp32/fp16.

    The int4 defaults are the setting that is no worse than llama.cpp's Q4_K_M in KL while under
    30% of fp16 on the benchmark model (``benchmarks/onnx_precisions.md``): ``first_last`` mixed
    precision, block 128, ``k_quant`` rounding for a model with a tied embedding and the builder's
    default rounding otherwise (the same KL as ``k_quant`` on an untied model, with no zero points
    to store). Three builder limits (onnxruntime-genai 0.18, onnxruntime 1.32) are worked around or
    refused up front rather than ending in a graph that does not load:

    * ``k_quant`` (and asymmetric ``rtn``) packs two 4-bit zero points per byte across rows, so it
      breaks on a MatMul whose input width spans an odd number of blocks: with the default block
      size the largest of 128/64/32/16 that avoids that (and is no wider than the narrowest
      MatMul) is taken — or, if none does, symmetric ``rtn`` (no zero points) —, an explicit one
      is refused;
    * ``first_last`` needs the builder's per-node overrides on the packed q/k/v projection, which
      drop a run-time adapter's exclusions and do not exist on DirectML (no packing there), so with
      a run-time or float adapter or ``dml`` only the LM head stays at int8;
    * the builder quantizes an untied embedding to 4 bits at most (and ``k_quant``/``rtn`` not at
      all), so with mixed precision it is left in float and made int8 afterwards
      (:func:`slmops.export.onnx_embedding.int8_embedding`). ``embedding`` in the plan: ``tied``
      reads the quantized LM head (built untied, tied afterwards by
      :func:`slmops.export.onnx_embedding.tied_embedding`), ``int8`` is that rewrite, ``int4`` the
      builder's, ``float`` none.
    """
    if cfg.precision not in ("int4", "int8"):
        return {}
    int4 = cfg.precision == "int4"
    algo = cfg.quant_algo or ("k_quant" if int4 and (tied or not cfg.quantize_embeddings) else "default")
    block = cfg.block_size or (INT4_BLOCKS[0] if int4 else 64)
    mixed = cfg.mixed_precision or ("none" if not int4 else "first_last")
    sizes = matmul_input_sizes(model_cfg)
    if int4 and cfg.block_size is None and sizes:  # no block wider than the narrowest MatMul (it would be mostly padding)
        block = next((b for b in INT4_BLOCKS if b <= sizes[0]), INT4_BLOCKS[-1])
    if int4 and (algo == "k_quant" or (algo == "rtn" and not cfg.symmetric)):
        fits = [b for b in (INT4_BLOCKS if cfg.block_size is None else (block,)) if b <= block and not _odd_block_counts(sizes, b)]
        if not fits and cfg.quant_algo is None and cfg.symmetric:
            log.warning("export.onnx: k_quant cannot pack this model's zero points at block size %s; rounding with symmetric rtn instead", block)
            algo, fits = "rtn", [block]
        if not fits:
            odd = _odd_block_counts(sizes, block)
            raise ConfigError(
                f"{algo} int4 at block size {block} cannot quantize this model",
                why=f"MatMul input width {odd[0]} is an odd number of {block}-weight blocks, and onnxruntime's {algo} packs zero points "
                    "in pairs across rows (its output would not load)",
                fix="pick a --block-size that divides the hidden and MLP widths an even number of times, or use --quant-algo default",
            )
        block = fits[0]
    if mixed == "first_last" and (runtime_adapter or cfg.execution_provider == "dml"):
        log.info("export.onnx: with a run-time adapter or for DirectML only the LM head stays at int8 (mixed_precision last)")
        mixed = "last"
    embedding = "float"
    if tied:
        embedding = "tied"
    elif int4 and cfg.quantize_embeddings and mixed != "none":
        embedding = "int8"
    elif int4 and cfg.quantize_embeddings and algo == "default":
        embedding = "int4"
    elif int4 and cfg.quantize_embeddings:
        log.warning("export.onnx: quant_algo %s with mixed_precision none leaves this model's (untied) token embedding in float", algo)
    return {"algo": algo, "block_size": block, "symmetric": cfg.symmetric, "mixed_precision": mixed, "embedding": embedding}


def first_layers(num_layers: int) -> range:
    """The first eighth of the layers, at least one (llama.cpp's ``i < n_layers / 8`` rule for the layers that get more bits)."""
    return range(max(1, math.ceil(num_layers / 8)))


def int8_node_names(num_layers: int) -> list[str]:
    """Builder node names ``first_last`` keeps at int8 besides the LM head: the first layers' packed q/k/v and output projections."""
    return [f"/model/layers.{i}/attn/{proj}/MatMul" for i in first_layers(num_layers) for proj in ("qkv_proj", "o_proj")]


def builder_options(cfg: OnnxExportConfig, *, adapter_path: Path | None = None, exclude_nodes: list[str] | None = None,
                    plan: dict[str, Any] | None = None) -> dict[str, str]:
    """The builder's ``--extra_options`` for ``cfg`` (authentication and remote code always off).

    ``plan`` is :func:`plan_quantization`'s (default: ``cfg``'s values as they are). Mixed precision
    ``last`` and ``mixed`` are the builder's own ``matmul_mixed_precision`` presets; ``first_last``
    goes through :func:`target_options`.
    """
    opts = {"hf_token": "false", "hf_remote": "false"}
    if cfg.precision in ("int4", "int8"):
        plan = plan or plan_quantization(cfg, {}, tied=False)
        opts["block_size"] = str(plan["block_size"])
        opts["is_symmetric"] = "true" if cfg.symmetric else "false"
        if cfg.accuracy_level is not None:
            opts["accuracy_level"] = str(cfg.accuracy_level)
        if plan["algo"] != "default":
            opts["algo_config"] = plan["algo"]
        if cfg.precision == "int4" and plan.get("embedding") == "int4":
            opts["op_types_to_quantize"] = "MatMul/Gather"
        if plan.get("embedding") == "tied":  # a float embedding of its own; tied to the quantized head afterwards (onnx_embedding)
            opts["shared_embeddings"] = "false"
        if plan["mixed_precision"] in ("last", "mixed"):
            opts["matmul_mixed_precision"] = "last_matmul:int8" + (",mixed_layers:int8" if plan["mixed_precision"] == "mixed" else "")
    if adapter_path is not None:
        opts["adapter_path"] = str(adapter_path)
    if exclude_nodes:
        opts["nodes_to_exclude"] = ",".join(exclude_nodes)
    return opts


def target_options(mixed_precision: str | None, num_layers: int) -> dict[str, Any] | None:
    """The builder's structured ``target_options`` for ``first_last`` (per-node int8 overrides), else ``None``.

    The overrides replace the builder's list, so they repeat the ``last_matmul`` preset; they also
    drop ``nodes_to_exclude`` (hence no ``first_last`` with run-time adapters, see :func:`export_onnx`).
    """
    if mixed_precision != "first_last":
        return None
    overrides: list[dict[str, Any]] = [{"match": {"preset": "last_matmul"}, "type": "int8"}]
    overrides += [{"match": {"name": name}, "type": "int8"} for name in int8_node_names(num_layers)]
    return {"quant_config": {"weights": {"overrides": overrides}}}
