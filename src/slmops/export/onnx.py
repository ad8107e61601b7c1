"""Hugging Face folder → ONNX Runtime GenAI folder, through onnxruntime-genai's model builder.

:func:`export_onnx` checks the source first (an architecture the builder supports, a tokenizer,
room on disk), then calls ``onnxruntime_genai.models.builder.create_model`` — the engine Olive's
ModelBuilder pass uses — in this process (offline: ``HF_HUB_OFFLINE=1``; its prints go to the debug
log, its ``Reading layer N`` lines drive the progress bar; in-process, because a child process would
pay seconds of torch/transformers imports per export), and finishes the folder:

* ``tokenizer.json`` is the source's own file (the builder re-saves it through transformers, which
  can change it), and ``tokenizer_config.json`` gets ``add_bos_token`` (ORT GenAI's tokenizer never
  adds a BOS; the ``ort-genai`` runtime and Foundry Local read this and the chat template);
* the chat template goes to ``chat_template.jinja`` and ``tokenizer_config.json`` without the
  transformers-only ``{% generation %}`` tags, so plain Jinja renderers accept it.

Precisions: ``fp32``, ``fp16``, ``int8`` and ``int4`` (weight-only ``MatMulNBits`` with a block size,
symmetric or not, an accuracy level, a rounding algorithm, and for int4 the embedding quantized too).
int4 defaults to *mixed precision* ``first_last`` at block 128: the LM head (and the embedding
tied to it) and the attention projections of the first eighth of the layers stay at int8, the rest
is int4, rounded by the builder's ``k_quant`` when the embedding is tied (its default quantizer
otherwise) — the one setting found that is no worse than llama.cpp's Q4_K_M in KL while staying
under 30% of fp16 (plain RTN int4 had 4× Q4_K_M's KL; see :func:`plan_quantization` and
``benchmarks/onnx_precisions.md``). ``first_last`` goes to the builder as per-node overrides
(its structured ``target_options``); ``last`` and ``mixed`` are its own presets. fp16 for the CPU
is laid out like the builder's CUDA fp16 graph (see :func:`build_provider`). A failing builder,
a full disk or an interruption raise :class:`ExportError`; the stage runner then drops the
half-written output, so no artifact appears.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from slmops._optional import require
from slmops.errors import ConfigError, SlmopsError
from slmops.export.onnx_embedding import int8_embedding, quantized_layout, tied_embedding
from slmops.export.onnx_quant import builder_options, plan_quantization, target_options, tied_embeddings
from slmops.progress import task

log = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "int8", "int4"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8", "int4")

#: transformers architectures slmops exports and checks in its tests (tiny Llama, Qwen2, Phi-3).
TESTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Phi3ForCausalLM")
#: further text decoders the model builder (onnxruntime-genai 0.18) converts; exported, but untested here.
BUILDER_ARCHITECTURES = (
    "MistralForCausalLM", "Qwen3ForCausalLM", "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM",
    "PhiForCausalLM", "SmolLM3ForCausalLM", "GraniteForCausalLM", "OlmoForCausalLM", "NemotronForCausalLM",
    "Ernie4_5ForCausalLM", "InternLM2ForCausalLM", "HunYuanDenseV1ForCausalLM", "ChatGLMModel",
)
#: output bytes per source parameter (upper bounds, for the disk check).
_BYTES_PER_PARAM = {"fp32": 4.2, "fp16": 2.2, "int8": 2.2, "int4": 1.2}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


class ExportError(SlmopsError):
    """An export could not be completed (the builder failed, the disk filled up, it was interrupted)."""




class OnnxExportConfig(BaseModel):
    """Config of ``export.onnx``: precision and quantization, LoRA adapter handling, and the parity check."""

    model_config = ConfigDict(extra="forbid")

    precision: Precision = Field("int4", description="Weights: fp32, fp16, int8 or int4 (weight-only MatMulNBits)")
    execution_provider: Literal["cpu", "cuda", "dml", "webgpu"] = Field("cpu", description="Execution provider the graph is built for")
    block_size: Literal[16, 32, 64, 128, 256] | None = Field(
        None, description="int4/int8: weights per quantization block (default: 64 for int8; 128 for int4, or the largest of 64/32/16 that "
                          "k_quant can pack for the model; smaller is closer to fp32 and bigger)"
    )
    symmetric: bool = Field(True, description="int4/int8: symmetric quantization (int4/int8); false = asymmetric (uint4/uint8 with zero points)")
    accuracy_level: Literal[1, 2, 3, 4] | None = Field(
        None, description="int4/int8: minimum precision of the activations in MatMulNBits (1 fp32, 2 fp16, 3 bf16, 4 int8; builder default 4 on CPU, "
                          "but 1 for 4-bit MatMuls written on a GGUF's grid, which then compute the source model exactly)"
    )
    quant_algo: Literal["default", "rtn", "k_quant"] | None = Field(
        None, description="int4/int8: how weights are rounded: default (the builder's MLAS RTN), rtn, or k_quant (llama.cpp-style scale and "
                          "zero-point search, always with zero points; leaves an untied embedding in float); default: k_quant for int4 "
                          "models whose embedding is tied to the LM head, default otherwise"
    )
    mixed_precision: Literal["none", "last", "first_last", "mixed"] | None = Field(
        None, description="int4: MatMuls kept at int8: none; last (the LM head, and a tied embedding with it); first_last (that plus the "
                          "attention projections of the first eighth of the layers); mixed (the LM head plus q/k/v and down projections of "
                          "the first and last eighth and every third layer, llama.cpp's Q4_K_M choice); default: first_last for int4 "
                          "(none with quant_algo default on a tied model, which the builder cannot mix)"
    )
    quantize_embeddings: bool = Field(True, description="int4: quantize the token embedding too (untied models keep it in float otherwise)")
    weight_grid: Literal["auto", "source", "requantize"] = Field(
        "auto", description="int4/int8: which grid the quantized weights lie on. source: every MatMul whose tensor in the GGUF the model was "
                            "dequantized from (models.from_gguf) is Q4_0, Q4_1 or Q8_0 is written exactly on that grid (block 32, the "
                            "GGUF's codes and scales, Q4_1's offsets as float zero points), the rest by the quantization plan; requantize: "
                            "every weight is rounded anew (quant_algo); auto: source when the model comes from such a GGUF and no adapter "
                            "is merged into it, requantize otherwise"
    )
    adapter_mode: Literal["merge", "runtime", "float"] = Field(
        "merge", description="With an adapter input: merge it into the weights (merge), export it as a switchable ORT GenAI adapter (runtime), "
                             "or keep it always on as float LoRA branches beside the quantized base weights (float: int4/int8 rounding "
                             "leaves the adapter's changes exact, for the size of the LoRA in fp32)"
    )
    adapter_name: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Name of the exported run-time adapter")
    parity_texts: int = Field(4, ge=0, le=256, description="Texts scored against the source (KL, top-1, greedy); 0 skips the check")
    parity_tokens: int = Field(64, ge=8, le=4096, description="Tokens per parity text")

    @model_validator(mode="after")
    def _quant_options_need_quant(self) -> OnnxExportConfig:
        if self.precision in ("fp32", "fp16"):
            changed = [f for f in ("block_size", "symmetric", "accuracy_level", "quant_algo", "mixed_precision", "weight_grid")
                       if getattr(self, f) != type(self).model_fields[f].default]
            if changed:
                raise ValueError(f"{', '.join(changed)} only apply to precision int4 or int8, not {self.precision} (drop them or quantize)")
        if self.precision == "int8" and self.mixed_precision not in (None, "none"):
            raise ValueError(f"mixed_precision {self.mixed_precision} only applies to precision int4 (int8 keeps every MatMul at int8)")
        return self


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}", why=str(exc), fix="check the model folder") from exc
    return data if isinstance(data, dict) else {}


def check_source(src: Path) -> dict[str, Any]:
    """Refuse a folder the builder cannot export (architecture, tokenizer, weights); return its facts."""
    if not (src / "config.json").is_file():
        raise ConfigError(f"{src} is not a Hugging Face model folder", why="it has no config.json", fix="pass a model artifact")
    cfg = _read_json(src / "config.json")
    arch = (cfg.get("architectures") or [None])[0]
    if arch not in TESTED_ARCHITECTURES + BUILDER_ARCHITECTURES:
        raise ConfigError(
            f"export.onnx does not support the {arch or cfg.get('model_type') or 'unknown'} architecture",
            why="onnxruntime-genai's model builder has no converter for it" if arch else "config.json names no architecture",
            fix=f"export a model of a supported architecture ({', '.join(TESTED_ARCHITECTURES)} are tested), or use `slmops export gguf`",
        )
    if arch not in TESTED_ARCHITECTURES:
        log.warning("export.onnx: %s is supported by the model builder but not tested by slmops", arch)
    if not any((src / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError(
            f"model {src.name} has no tokenizer",
            why="ONNX Runtime GenAI needs tokenizer.json (or tokenizer.model) next to the model, and the folder has neither",
            fix="save the tokenizer into the model folder (tokenizer.save_pretrained) and import it again",
        )
    weights = list(src.glob("*.safetensors"))
    if not weights:
        raise ConfigError(f"model {src.name} has no safetensors weights", fix="import it with `slmops models import` (which converts pickles)")
    params = sum(p.stat().st_size for p in weights) // _dtype_bytes(cfg)
    return {"architecture": arch, "model_type": cfg.get("model_type"), "num_layers": int(cfg.get("num_hidden_layers") or 0),
            "parameters_estimate": int(params), "tie_word_embeddings": bool(cfg.get("tie_word_embeddings"))}


def _dtype_bytes(cfg: dict[str, Any]) -> int:
    dtype = str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32")
    return 2 if dtype in ("float16", "bfloat16") else 4


def check_disk(out: Path, params: int, precision: str, *, extra_bytes: int = 0) -> int:
    """Refuse to start when the output's filesystem clearly cannot hold the export; return the estimate."""
    need = int(params * _BYTES_PER_PARAM[precision]) + extra_bytes + (16 << 20)
    free = shutil.disk_usage(out).free
    if free < need:
        raise ExportError(
            f"not enough disk space for this export: about {need / 2**20:.0f} MiB needed, {free / 2**20:.0f} MiB free",
            why=f"the {precision} ONNX model is written to {out.parent}",
            fix="free some space, pick a smaller --precision, or point SLMOPS_HOME (--home) at a bigger disk",
        )
    return need


class _LineSink(io.TextIOBase):
    """Where the builder's prints go while it runs: the debug log, the last lines kept, progress advanced."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.lines: list[str] = []
        self._part = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._part += text.replace("\r", "\n")
        *done, self._part = self._part.split("\n")
        for line in done:
            if not line.strip():
                continue
            log.debug("builder: %s", line)
            self.lines.append(line)
            if line.startswith(("Reading layer", "Reading embedding", "Reading final norm", "Reading LM head")):
                self.bar.advance(1)
        del self.lines[:-50]
        return len(text)


def _create_model(src: Path, out: Path, cache: Path, precision: str, ep: str, options: dict[str, str],
                  target: dict[str, Any] | None = None) -> None:
    """onnxruntime-genai's ``builder.create_model`` (the same call its command line makes; ``target`` = its ``--target_options``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    builder = require("onnxruntime_genai.models.builder", extra="onnx", purpose="exporting to ONNX")
    extra = {"target_options": target} if target else {}
    opts = builder.parse_extra_options(None, str(src), str(out), precision, ep, str(cache), [f"{k}={v}" for k, v in options.items()], **extra)
    builder.create_model(None, str(src), str(out), precision, ep, str(cache), **opts)


class _ExpectedQuantizerErrors(logging.Filter):
    """Drops the quantizer's "Gather only supports 4 bits" ERROR: at int8 the builder leaves the embedding
    in float by design (slmops rewrites it where the plan says so), so it is no error of the export."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "Gather only supports 4 bits" in record.getMessage():
            log.debug("onnxruntime quantizer: %s (expected: the embedding stays float at this precision)", record.getMessage())
            return False
        return True


@contextlib.contextmanager
def _quiet_ort_logging() -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in ("onnxruntime", "onnxruntime.quantization", "onnxruntime.quantization.matmul_nbits_quantizer")]
    levels = [lg.level for lg in loggers]
    expected = _ExpectedQuantizerErrors()
    for lg in loggers:
        lg.setLevel(max(logging.WARNING, log.getEffectiveLevel()))
        lg.addFilter(expected)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
            lg.removeFilter(expected)


def build_provider(cfg: OnnxExportConfig) -> str:
    """The execution provider the builder lays the graph out for.

    fp16 for CPU is built with the builder's CUDA layout (GroupQueryAttention in fp16, which ORT's
    CPU provider runs) and then pointed at the CPU provider: the builder's own fp16 CPU graph
    (MultiHeadAttention with repeat_kv) fails in onnxruntime 1.32 on the first decode step after
    the prompt ("Shape mismatch attempting to re-use buffer").
    """
    return "cuda" if cfg.precision == "fp16" and cfg.execution_provider == "cpu" else cfg.execution_provider


def _use_cpu_provider(out: Path) -> None:
    path = out / "genai_config.json"
    genai = _read_json(path)
    session = genai.get("model", {}).get("decoder", {}).get("session_options", {})
    session["provider_options"] = []
    path.write_text(json.dumps(genai, indent=4) + "\n", encoding="utf-8")


def run_builder(src: Path, out: Path, cache: Path, cfg: OnnxExportConfig, options: dict[str, str], *, total_layers: int,
                target: dict[str, Any] | None = None) -> None:
    """Run the model builder on ``src`` into ``out`` (offline; its prints go to the debug log); failures become :class:`ExportError`."""
    with task(f"export.onnx {cfg.precision}", total=total_layers + 3) as bar:
        sink = _LineSink(bar)
        try:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), _quiet_ort_logging(), warnings.catch_warnings():
                # the quantizer divides by zero scales of all-zero blocks (padding), and says so
                warnings.filterwarnings("ignore", category=RuntimeWarning, module="onnxruntime.quantization")
                if target:
                    _create_model(src, out, cache, cfg.precision, build_provider(cfg), options, target)
                else:
                    _create_model(src, out, cache, cfg.precision, build_provider(cfg), options)
            if build_provider(cfg) != cfg.execution_provider:
                _use_cpu_provider(out)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise ExportError("export.onnx ran out of disk space", why=str(exc),
                                  fix="free some space or point SLMOPS_HOME (--home) at a bigger disk, then run the export again") from exc
            raise _failure(sink.lines, exc) from exc
        except NotImplementedError as exc:
            raise ExportError("onnxruntime-genai's model builder cannot export this model", why=str(exc).strip(),
                              fix="check the architecture and --precision/--execution-provider combination") from exc
        except (ValueError, RuntimeError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise _failure(sink.lines, exc) from exc


def _failure(lines: list[str], exc: BaseException) -> ExportError:
    log.error("model builder output (last lines):\n%s", "\n".join(lines[-20:]))
    why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return ExportError("onnxruntime-genai's model builder failed", why=why, fix="run with -vv to see the builder's output in the log")


def finish_folder(src: Path, out: Path) -> dict[str, Any]:
    """Put the source's tokenizer, ``add_bos_token`` and a plain-Jinja chat template into the exported folder."""
    from slmops.data.templates import chat_template_of
    from slmops.models.loading import load_tokenizer
    from slmops.models.tokenizer import strip_generation_tags

    for name in ("genai_config.json", "model.onnx"):
        if not (out / name).is_file():
            raise ExportError(f"the model builder wrote no {name}", why=f"{out} is incomplete", fix="run with -vv to see the builder's output")
    if (src / "tokenizer.json").is_file():
        shutil.copyfile(src / "tokenizer.json", out / "tokenizer.json")
    tok = load_tokenizer(src)
    bos = getattr(tok, "bos_token_id", None)
    with_special = tok.encode("a", add_special_tokens=True)
    add_bos = bos is not None and bool(with_special) and with_special[0] == bos and tok.encode("a", add_special_tokens=False)[:1] != [bos]
    try:
        template: str | None = strip_generation_tags(chat_template_of(tok))
    except ConfigError:
        template = None
    tcfg_path = out / "tokenizer_config.json"
    tcfg = _read_json(tcfg_path) if tcfg_path.is_file() else {}
    tcfg["add_bos_token"] = add_bos
    if template:
        tcfg["chat_template"] = template
        (out / "chat_template.jinja").write_text(template, encoding="utf-8")
    else:
        (out / "chat_template.jinja").unlink(missing_ok=True)
    tcfg_path.write_text(json.dumps(tcfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    genai = _read_json(out / "genai_config.json")
    model = genai.get("model") or {}
    return {"add_bos": add_bos, "bos_token_id": model.get("bos_token_id"), "eos_token_id": model.get("eos_token_id"),
            "context_length": model.get("context_length"), "vocab_size": model.get("vocab_size"), "genai_model_type": model.get("type"),
            "chat_template": template is not None}


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def export_onnx(src: Path, out: Path, cfg: OnnxExportConfig, *, adapter_path: Path | None = None,
                exclude_nodes: list[str] | None = None, source_grid: Path | None = None) -> dict[str, Any]:
    """Export the Hugging Face folder ``src`` into ``out`` (see the module docstring); returns facts for the manifest.

    ``adapter_path`` (a PEFT LoRA folder) makes the builder add LoRA branches to the graph; the caller
    turns them into run-time adapter inputs (``adapter_mode=runtime``). ``source_grid``: the GGUF file
    ``src`` was dequantized from; its Q4_0/Q4_1/Q8_0 weights are written on their own grid
    (:func:`slmops.export.onnx_grid.write_source_grid`).
    """
    facts = check_source(src)
    model_cfg = _read_json(src / "config.json")
    tied = tied_embeddings(src, model_cfg)
    plan = plan_quantization(cfg, model_cfg, tied=tied, runtime_adapter=bool(exclude_nodes))
    facts["estimated_bytes"] = check_disk(out, facts["parameters_estimate"], cfg.precision)
    cache = out / ".builder-cache"
    cache.mkdir(parents=True, exist_ok=True)
    layers = facts["num_layers"]
    try:
        options = builder_options(cfg, adapter_path=adapter_path, exclude_nodes=exclude_nodes, plan=plan)
        try:
            run_builder(src, out, cache, cfg, options, total_layers=layers, target=target_options(plan.get("mixed_precision"), layers))
        except ExportError as exc:
            if plan.get("mixed_precision") != "first_last" or "did not match an emitted node" not in str(exc.__cause__):
                raise
            log.warning("export.onnx: the model builder names this model's attention differently (%s); only the LM head stays at int8",
                        str(exc.__cause__).strip())
            plan["mixed_precision"] = "last"
            run_builder(src, out, cache, cfg, builder_options(cfg, adapter_path=adapter_path, exclude_nodes=exclude_nodes, plan=plan),
                        total_layers=layers)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    try:
        if plan:
            plan["grid"] = "requantize"
        if plan and source_grid is not None:
            from slmops.export.onnx_grid import write_source_grid

            plan["grid"] = "source"
            plan["source_grid"] = write_source_grid(out, source_grid, src, tied=tied, tied_embedding=plan.get("embedding") == "tied",
                                                    embedding=plan.get("embedding") == "int8", accuracy_level=cfg.accuracy_level)
        facts.update(finish_folder(src, out))
        if plan.get("embedding") == "tied" and tied_embedding(out) is None:
            log.warning("export.onnx: the LM head is not quantized, so the tied embedding cannot read it; quantizing it to int8 on its own")
            plan["embedding"] = "int8"
        on_grid = (plan.get("source_grid") or {}).get("embedding")
        if plan.get("embedding") == "int8" and not on_grid and not int8_embedding(out, plan["block_size"]):
            log.warning("export.onnx: found no float token-embedding Gather to quantize to int8; the embedding stays in float")
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ExportError("export.onnx ran out of disk space", why=str(exc), fix="free some space or point SLMOPS_HOME (--home) at a bigger disk") from exc
        raise
    if plan:
        facts["quantization"] = {**plan, **quantized_layout(out)}
    facts.update(precision=cfg.precision, execution_provider=cfg.execution_provider, builder_layout=build_provider(cfg), size_bytes=folder_size(out))
    return facts
