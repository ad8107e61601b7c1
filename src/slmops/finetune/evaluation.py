"""Validation during fine-tuning: token-level loss and accuracy, and greedy exact match.

Loss is the summed cross-entropy over every answer token of the validation split divided by
their number (the same per-token normalisation as training, independent of batch size).
With several processes each takes every n-th row and the sums are added up across processes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from slmops._optional import require
from slmops.data.records import Record
from slmops.data.templates import (
    IGNORE_INDEX,
    chat_template_of,
    fields_from_messages,
    render_chat,
    render_text_template,
    special_token_kwargs,
)
from slmops.finetune.data import Sequence, collate


def token_loss_sum(logits: Any, labels: Any, *, accuracy: bool = False) -> tuple[Any, Any]:
    """(summed next-token cross-entropy over labelled positions, correct argmax predictions or None).

    The labels are shifted (not the logits), so the big ``[batch, seq, vocab]`` tensor is never
    copied; the argmax for ``accuracy`` is only computed when asked (evaluation).
    """
    torch = require("torch", extra="train")
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    flat = logits.reshape(-1, logits.size(-1))
    if flat.dtype != torch.float32:
        flat = flat.float()
    loss = torch.nn.functional.cross_entropy(flat, shifted.reshape(-1), reduction="sum", ignore_index=IGNORE_INDEX)
    correct = None
    if accuracy:
        mask = shifted != IGNORE_INDEX
        correct = ((logits.argmax(-1) == shifted) & mask).sum()
    return loss, correct


def forward_logits(model: Any, batch: dict[str, Any], device: Any, **extra: Any) -> Any:
    kw = {"input_ids": batch["input_ids"].to(device), "use_cache": False, **extra}
    if "attention_mask" in batch:
        kw["attention_mask"] = batch["attention_mask"].to(device)
    if "position_ids" in batch:
        kw["position_ids"] = batch["position_ids"].to(device)
    return model(**kw).logits


def can_select_logits(model: Any) -> bool:
    """Whether the (PEFT-wrapped) causal LM takes ``logits_to_keep`` (transformers >= 4.50 models do)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def answer_loss_sum(model: Any, batch: dict[str, Any], device: Any, *, select: bool, accuracy: bool = False) -> tuple[Any, Any]:
    """Like :func:`token_loss_sum` on the model's output, but computing logits only where there is a label.

    With ``select`` the model projects onto the vocabulary only the positions that predict an answer
    token (``logits_to_keep`` as a boolean mask): prompts usually make up most of an SFT sequence,
    and the ``hidden x vocab`` head is a large share of a small model's compute.
    """
    torch = require("torch", extra="train")
    labels = batch["labels"].to(device)
    if not select:
        return token_loss_sum(forward_logits(model, batch, device), labels, accuracy=accuracy)
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    keep = shifted != IGNORE_INDEX
    logits = forward_logits(model, batch, device, logits_to_keep=keep)
    flat = logits.reshape(-1, logits.size(-1))
    if flat.dtype != torch.float32:
        flat = flat.float()
    target = shifted[keep]
    loss = torch.nn.functional.cross_entropy(flat, target, reduction="sum")
    correct = (flat.argmax(-1) == target).sum() if accuracy else None
    return loss, correct


def evaluate(
    model: Any,
    rows: list[Sequence],
    *,
    batch_size: int,
    pad_id: int,
    device: Any,
    autocast: Callable[[], Any],
    reduce: Callable[[Any], Any] = lambda t: t,
    rank: int = 0,
    world: int = 1,
) -> dict[str, float]:
    """``val_loss`` and ``val_token_accuracy`` of ``model`` on ``rows`` (model returned to train mode)."""
    torch = require("torch", extra="train")
    was_training = model.training
    model.eval()
    mine = rows[rank::world]
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, label tokens
    select = can_select_logits(model)
    with torch.no_grad():
        for i in range(0, len(mine), batch_size):
            batch = collate(mine[i : i + batch_size], pad_id)
            with autocast():
                loss, correct = answer_loss_sum(model, batch, device, select=select, accuracy=True)
            totals += torch.stack([loss.double(), correct.double(), torch.tensor(batch["label_tokens"], dtype=torch.float64, device=device)])
    totals = reduce(totals)
    if was_training:
        model.train()
    n = max(float(totals[2]), 1.0)
    return {"val_loss": float(totals[0]) / n, "val_token_accuracy": float(totals[1]) / n}


def prompt_text(tokenizer: Any, record: Record, template: str | None) -> str:
    """The prompt the model sees before its answer (chat template with generation prompt, or text template up to {output})."""
    prompt = record.prompt_messages
    if template is not None:
        fields = fields_from_messages([*prompt, {"role": "assistant", "content": "\x00"}])
        text = render_text_template(template, fields)
        return text.split("\x00", 1)[0]
    tpl = chat_template_of(tokenizer)
    msgs = [m.model_dump(exclude_none=True) for m in prompt]
    return render_chat(tpl, msgs, add_generation_prompt=True, **special_token_kwargs(tokenizer))


def exact_match(model: Any, tokenizer: Any, records: list[Record], *, template: str | None, max_new_tokens: int, device: Any) -> float | None:
    """Share of validation records whose greedy answer equals the reference (whitespace-trimmed)."""
    torch = require("torch", extra="train")
    scored = [r for r in records if r.completion is not None]
    if not scored:
        return None
    was_training = model.training
    model.eval()
    eos = [t for t in {tokenizer.eos_token_id, getattr(model.config, "eos_token_id", None)} if isinstance(t, int)]
    hits = 0
    with torch.no_grad():
        for rec in scored:
            text = prompt_text(tokenizer, rec, template)
            add_special = template is not None
            ids = tokenizer(text, add_special_tokens=add_special, return_tensors="pt")["input_ids"].to(device)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=eos or None, pad_token_id=tokenizer.pad_token_id)
            answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
            hits += answer.strip() == (rec.completion or "").strip()
    if was_training:
        model.train()
    return hits / len(scored)
