"""Quantizing a GGUF with llama.cpp's own ``llama_model_quantize``, optionally guided by an importance matrix.

The quantization itself is llama.cpp's (the same code as its ``llama-quantize`` tool, called through
llama-cpp-python), so a Q4_K_M from slmops is the Q4_K_M llama.cpp and Ollama expect, including its
per-tensor choices (attention-V and FFN-down kept at higher precision, the output tensor at Q6_K…).
K-quants need rows whose length is a multiple of 256 (their super-block): llama.cpp falls back to
a 32-wide type (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, Q2_K/Q3_K → IQ4_NL) for a tensor that is
not. :func:`quant_summary` reads what was actually written — the count of tensors per type, the
bits per weight of each type and of the whole file, and which tensors fell back and why — so a
"Q4_K_M" that is mostly Q5_0 (SmolLM2-135M: hidden size 576) says so in the manifest and the CLI.

An importance matrix (:func:`compute_imatrix`) is the mean squared activation entering each
weight's columns, measured with the torch model on the user's own texts; llama.cpp uses it to
spend precision where the activations are large.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from slmops import progress
from slmops._optional import require
from slmops.errors import ConfigError, DataError, StoreError

log = logging.getLogger(__name__)

#: qtype -> llama_ftype (llama.h ``LLAMA_FTYPE_*``).
QTYPES: dict[str, int] = {
    "f32": 0,
    "f16": 1,
    "bf16": 32,
    "q8_0": 7,
    "q6_k": 18,
    "q5_k_m": 17,
    "q5_k_s": 16,
    "q5_0": 8,
    "q4_k_m": 15,
    "q4_k_s": 14,
    "q4_0": 2,
    "q3_k_m": 12,
    "q2_k": 10,
}


def check_qtype(qtype: str) -> str:
    q = qtype.lower()
    if q not in QTYPES:
        raise ConfigError(f"--qtype {qtype} is not supported by export.gguf", fix=f"use one of {', '.join(QTYPES)}")
    return q


def quantize_gguf(src: Path, dst: Path, qtype: str, *, imatrix: dict[str, np.ndarray] | None = None, nthread: int = 0) -> dict[str, Any]:
    """Quantize the GGUF ``src`` (f32 or f16) to ``dst`` as ``qtype``; return the tensor types written."""
    from slmops.models.gguf_file import check_gguf_file
    from slmops.runtimes.llamacpp_lib import clear_problems, lib, recent_problems

    qtype = check_qtype(qtype)
    L = lib()
    params = L.llama_model_quantize_default_params()
    params.ftype = QTYPES[qtype]
    params.nthread = int(nthread)
    keep: list[Any] = []  # the ctypes buffers must outlive the call
    if imatrix:
        entries = (L.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(sorted(imatrix.items())):
            arr = np.ascontiguousarray(values, dtype=np.float32)
            if not np.all(np.isfinite(arr)):
                raise DataError(f"the importance matrix of {name} holds non-finite values", fix="check the calibration texts")
            keep.append(arr)
            entries[i].name = name.encode()
            entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = arr.size
        entries[len(imatrix)].name = None
        keep.append(entries)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(L.llama_model_imatrix_data))
    dst = Path(dst)
    partial = dst.with_name(dst.name + ".partial")
    clear_problems()
    try:
        with progress.task(f"quantize {qtype}", total=None):
            rc = L.llama_model_quantize(str(src).encode(), str(partial).encode(), ctypes.byref(params))
        if rc != 0:
            reason = recent_problems()
            if "No space left" in reason or "failbit" in reason:
                raise StoreError(f"no space left on the disk while writing {dst.name}", why=reason,
                                 fix="free disk space, or point SLMOPS_HOME at a bigger disk, and run the export again")
            raise ConfigError(f"llama.cpp could not quantize {src.name} to {qtype}", why=reason, fix="check the f32 GGUF loads (slmops export gguf --qtype f32)")
        check_gguf_file(partial)
        os.replace(partial, dst)
    finally:
        partial.unlink(missing_ok=True)
    summary = quant_summary(dst, qtype)
    if summary.get("fallbacks"):
        log.warning("export.gguf: %s", fallback_line(summary))
    return {"qtype": qtype, **summary, "imatrix_tensors": len(imatrix or {}), "file_bytes": dst.stat().st_size}


#: the 32-wide type llama.cpp writes instead of a K-quant when a row is not a multiple of 256 (llama-quant.cpp).
K_FALLBACKS: dict[str, str] = {"Q2_K": "IQ4_NL", "Q3_K": "IQ4_NL", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
K_BLOCK = 256


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each ggml type a GGUF holds (e.g. ``{"Q4_K": 10, "Q6_K": 2, "F32": 5}``)."""
    return quant_summary(path)["tensor_types"]


def quant_summary(path: Path, qtype: str | None = None) -> dict[str, Any]:
    """What a GGUF holds: ``tensor_types`` (count per ggml type), ``type_bits`` (bits per weight of each type, scales included),
    ``bits_per_weight`` (all tensors), and for a K-quant ``qtype`` the ``fallbacks``: how many weight matrices have rows that
    are not a multiple of 256 and which 32-wide types llama.cpp wrote for them (``{"tensors", "weights", "row_lengths",
    "types": {"Q4_K->Q5_0": n, ...}, "reason"}``; absent when none fell back)."""
    gguf = require("gguf", extra="gguf", purpose="reading GGUF files")
    reader = gguf.GGUFReader(str(path), "r")
    counts: Counter[str] = Counter()
    elems: Counter[str] = Counter()
    nbytes: Counter[str] = Counter()
    narrow: list[tuple[str, int]] = []
    matrices = 0
    for t in reader.tensors:
        kind = t.tensor_type.name
        counts[kind] += 1
        elems[kind] += int(t.n_elements)
        nbytes[kind] += int(t.n_bytes)
        if len(t.shape) >= 2 and int(t.n_elements) > int(t.shape[0]):
            matrices += 1
            if int(t.shape[0]) % K_BLOCK:
                narrow.append((kind, int(t.shape[0])))
    total_e, total_b = sum(elems.values()), sum(nbytes.values())
    out: dict[str, Any] = {
        "tensor_types": dict(sorted(counts.items())),
        "type_bits": {k: round(nbytes[k] * 8 / elems[k], 3) for k in sorted(counts) if elems[k]},
        "bits_per_weight": round(total_b * 8 / total_e, 3) if total_e else None,
    }
    if qtype and "_k" in qtype.lower():
        back = {v: k for k, v in reversed(K_FALLBACKS.items())}
        fell = Counter(f"{back[kind]}->{kind}" for kind, _ in narrow if kind in back)
        if fell:
            rows = sorted({r for kind, r in narrow if kind in back})
            out["fallbacks"] = {
                "tensors": sum(fell.values()), "matrices": matrices, "row_lengths": rows, "types": dict(sorted(fell.items())),
                "reason": f"rows of {', '.join(map(str, rows))} weights are not a multiple of {K_BLOCK} (a K-quant super-block), "
                          "so llama.cpp wrote a 32-wide type instead",
            }
    return out


def fallback_line(summary: dict[str, Any]) -> str:
    """One sentence on the K-quant fallbacks of a :func:`quant_summary` (empty when there were none)."""
    fb = summary.get("fallbacks")
    if not fb:
        return ""
    types = ", ".join(f"{k.replace('->', ' → ')} ×{v}" for k, v in fb["types"].items())
    return (f"{fb['tensors']} of {fb['matrices']} weight matrices are not K-quants: their {fb['reason']} ({types}); "
            f"{summary['bits_per_weight']} bits per weight overall")


def compute_imatrix(model_folder: Path, texts: Iterable[str], *, max_texts: int = 64, max_tokens: int = 512) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The importance matrix of a HF model on ``texts``: GGUF weight name -> mean squared input activation.

    Runs the torch model (fp32, CPU) over at most ``max_texts`` texts of at most ``max_tokens``
    tokens each, with a forward pre-hook on every linear layer; returns the matrix and
    ``{"texts": n, "tokens": m}``.
    """
    from slmops.models.gguf_arch import gguf_base_name, read_config, read_hparams
    from slmops.models.loading import load_model_and_tokenizer

    torch = require("torch", extra="train", purpose="computing an importance matrix")
    hp = read_hparams(read_config(Path(model_folder)))
    model, tok = load_model_and_tokenizer(Path(model_folder))
    sums: dict[str, Any] = {}
    counts: dict[str, int] = {}
    hooks = []

    def hook_for(name: str) -> Any:
        def hook(_mod: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            sums[name] = sums.get(name, 0) + (x * x).sum(dim=0)
            counts[name] = counts.get(name, 0) + x.shape[0]

        return hook

    for mod_name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            base = gguf_base_name(mod_name, hp)
            if base is not None and not (base == "output" and hp.tie_word_embeddings):
                hooks.append(mod.register_forward_pre_hook(hook_for(f"{base}.weight")))
    n_texts = n_tokens = 0
    try:
        with torch.inference_mode(), progress.task("importance matrix", total=max_texts) as bar:
            for text in texts:
                if n_texts >= max_texts:
                    break
                ids = tok(text, add_special_tokens=True)["input_ids"][:max_tokens]
                if len(ids) < 2:
                    continue
                model(torch.tensor([ids]), use_cache=False)
                n_texts += 1
                n_tokens += len(ids)
                bar.advance()
    finally:
        for h in hooks:
            h.remove()
    if n_texts == 0:
        raise DataError("no calibration text for the importance matrix", why="every text was empty", fix="pass a dataset with text, or leave --imatrix-data out")
    matrix = {name: (sums[name] / counts[name]).cpu().numpy().astype(np.float32) for name in sums}
    return matrix, {"texts": n_texts, "tokens": n_tokens}
