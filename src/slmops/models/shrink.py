"""``models.shrink``: a smaller model of the teacher's architecture and tokenizer, initialised from it.

Depth pruning drops the layers of least block influence; width pruning keeps the hidden channels,
MLP neurons and attention heads of highest activation magnitude (Minitron-style), all measured in
one forward pass over calibration text (:mod:`slmops.models.importance`), cut by
:mod:`slmops.models.prune`. The student folder holds the teacher's tokenizer files byte for byte,
so logit KD from the teacher (``distill train --teacher``) works at once; the manifest records the
removed layers, the kept channel counts, the parameter counts and the perplexity of teacher and
student on held-out calibration text before any healing.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from slmops import progress
from slmops.errors import DataError, SlmopsError
from slmops.models.calibration import token_chunks
from slmops.models.loading import count_parameters, load_model_and_tokenizer, model_folder, quiet_progress

log = logging.getLogger(__name__)

TARGETS = ("num_layers", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads")
#: Files of the teacher folder that the student does not copy (it writes its own).
OWN_FILES = ("config.json", "generation_config.json", "manifest.json")
PLAN_FILE = "shrink.json"
SHRINK_BATCH_SIZE = 4  # windows per forward pass (speed only), unless the run options set batch_size


class ShrinkConfig(BaseModel):
    """Config of ``models.shrink``: the student's dimensions (unset = the teacher's) and the calibration."""

    model_config = ConfigDict(extra="forbid")

    num_layers: int | None = Field(None, description="Layers to keep; the ones of least block influence (cosine criterion) are dropped")
    hidden_size: int | None = Field(None, description="Hidden channels to keep (by activation magnitude at the norms)")
    intermediate_size: int | None = Field(None, description="MLP neurons to keep per layer (by activation magnitude)")
    num_heads: int | None = Field(None, description="Query heads to keep per layer (default: num_kv_heads × the teacher's group size)")
    num_kv_heads: int | None = Field(None, description="KV heads (GQA groups) to keep per layer (default: the most that divides num_heads)")
    calibration_sequences: int = Field(32, ge=1, le=100_000, description="Token windows of calibration text that measure importance")
    eval_sequences: int = Field(16, ge=0, le=100_000, description="Further (disjoint) windows that measure perplexity before healing; 0 = skip")
    sequence_length: int = Field(256, ge=8, le=32768, description="Tokens per calibration window")
    rescale_norms: bool = Field(True, description="Rescale RMSNorm weights over fewer hidden channels to keep their output's scale")

    def targets(self) -> dict[str, int | None]:
        return {k: getattr(self, k) for k in TARGETS}


def shrink_fingerprint(cfg: ShrinkConfig) -> str:
    """The packaged prose's digest: a new ``dataset-build`` version misses the cache (a data input is keyed by its digest)."""
    from slmops.data.prose import prose_fingerprint

    try:
        return prose_fingerprint()
    except SlmopsError:  # the prose is only needed without a data input; the stage says so when it is
        return "no-prose"


def _copy_tokenizer(teacher: Path, out: Path) -> list[str]:
    copied = []
    for p in sorted(teacher.iterdir()):
        if p.is_file() and p.name not in OWN_FILES and not p.name.startswith("model") and not p.name.endswith(".safetensors"):
            shutil.copyfile(p, out / p.name)
            copied.append(p.name)
    return copied


def shrink_model(teacher: Any, cfg: ShrinkConfig, out: Path, *, texts: list[str] | None = None, batch_size: int = SHRINK_BATCH_SIZE) -> dict[str, Any]:
    """Write the shrunk student of ``teacher`` (an artifact or folder) into ``out``; return the facts for the manifest.

    ``texts`` is the calibration text (default: the packaged English prose). Nothing is written
    until the requested dimensions have been checked against the teacher's.
    """
    from slmops._optional import require
    from slmops.models.importance import measure, perplexity
    from slmops.models.prune import choose, plan_dims, plan_facts, slice_tensor, student_config

    torch = require("torch", extra="train", purpose="shrinking a model")
    tf = require("transformers", extra="train", purpose="shrinking a model")
    folder = model_folder(teacher)
    config = tf.AutoConfig.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)
    dims = plan_dims(config, cfg.targets())  # refuses a bad request before any heavy work
    model, tok = load_model_and_tokenizer(folder)
    from slmops.data.prose import prose_texts

    source = "data" if texts is not None else "dataset-build"
    chunks = token_chunks(tok, texts if texts is not None else prose_texts(), length=cfg.sequence_length, count=cfg.calibration_sequences + cfg.eval_sequences)
    if len(chunks) < cfg.calibration_sequences:
        raise DataError(
            f"the calibration text gives {len(chunks)} windows of {cfg.sequence_length} tokens; {cfg.calibration_sequences} are needed",
            fix="pass more text, or lower --calibration-sequences / --sequence-length",
        )
    calib, held_out = chunks[: cfg.calibration_sequences], chunks[cfg.calibration_sequences :]
    with progress.task("shrink: measuring importance", total=len(calib)) as task:
        imp = measure(model, calib, batch_size=batch_size, on_batch=task.advance)
    plan = choose(imp, config, dims, rescale_norms=cfg.rescale_norms)
    new_config = student_config(config, plan)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        student = tf.AutoModelForCausalLM.from_config(new_config, dtype=torch.float32)
    teacher_sd = model.state_dict()
    new_sd = {name: slice_tensor(name, teacher_sd, plan, config) for name in student.state_dict()}
    student.load_state_dict(new_sd, strict=True)
    if getattr(config, "tie_word_embeddings", False):
        student.tie_weights()
    student.generation_config = model.generation_config
    student.eval()
    with progress.task("shrink: perplexity before healing", total=2) as task:
        ppl_teacher = perplexity(model, held_out, batch_size=batch_size)
        task.advance()
        ppl_student = perplexity(student, held_out, batch_size=batch_size)
        task.advance()
    params_before, params_after = count_parameters(model), count_parameters(student)
    with quiet_progress():
        student.save_pretrained(str(out))
    copied = _copy_tokenizer(folder, out)
    facts = plan_facts(plan, config)
    (out / PLAN_FILE).write_text(
        json.dumps(
            {**facts, "kept_hidden_indices": plan.hidden, "kept_neurons": {str(k): v for k, v in plan.neurons.items()},
             "kept_heads_per_layer": {str(k): v for k, v in plan.heads.items()}, "kept_kv_heads_per_layer": {str(k): v for k, v in plan.kv_heads.items()},
             "block_influence": [round(x, 6) for x in imp.block_influence], "norm_scale": plan.norm_scale},
            indent=1,
        )
        + "\n"
    )
    facts.update(
        model_type=config.model_type,
        architecture=type(student).__name__,
        parameters=params_after,
        parameters_teacher=params_before,
        parameter_ratio=round(params_after / params_before, 4),
        perplexity_teacher=round(ppl_teacher, 4) if ppl_teacher else None,
        perplexity_before_healing=round(ppl_student, 4) if ppl_student else None,
        calibration={"source": source, "sequences": len(calib), "eval_sequences": len(held_out), "sequence_length": cfg.sequence_length, "tokens": imp.tokens},
        block_influence=[round(x, 6) for x in imp.block_influence],
        tokenizer_files=copied,
        vocab_size=new_config.vocab_size,
        context_length=getattr(new_config, "max_position_embeddings", None),
        tie_word_embeddings=bool(getattr(new_config, "tie_word_embeddings", False)),
    )
    log.info(
        "models.shrink: %s -> %s parameters (%.0f%%), layers removed %s, perplexity %.2f -> %.2f before healing",
        params_before, params_after, 100 * params_after / params_before, facts["removed_layers"], ppl_teacher or 0, ppl_student or 0,
    )
    return facts
