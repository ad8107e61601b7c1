"""Teachers: who answers the prompts in ``distill.generate`` — an endpoint or a local model.

Both kinds implement :class:`Teacher`: ``run(requests, on_result)`` answers a list of
:class:`TeacherRequest` and calls ``on_result`` once per request, *in the calling thread*, with a
:class:`TeacherReply` or a :class:`TeacherFailure`, as soon as each is done — so the caller can
append every answer to disk the moment it exists. A problem that no retry can fix (a refused API
key, an unknown model) raises :class:`TeacherFatal` instead.

* :class:`~slmops.distill.http_teacher.HttpTeacher` — any OpenAI-compatible ``/chat/completions``
  endpoint (concurrency, RPM limit, retries, cache, usage and cost).
* :class:`LocalTeacher` — a model artifact, run with transformers in left-padded batches; it
  returns the top-k logprobs of every generated token as token ids.

Top-k logprobs travel in one compact form (:func:`compact_logprobs`): parallel lists per generated
token — ``tokens`` (text), ``lp`` (the chosen token's logprob), ``top_tokens``/``top_lp`` (the k
most likely), plus ``ids``/``top_ids`` when the teacher gives token ids — rounded to 4 decimals.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from slmops._optional import require
from slmops.errors import SlmopsError
from slmops.store.artifact import Artifact

log = logging.getLogger(__name__)

LP_DECIMALS = 4


class TeacherFatal(SlmopsError):
    """The teacher cannot answer any request (bad key, unknown model, unreachable config)."""


@dataclass(frozen=True)
class TeacherRequest:
    """One prompt to answer: ``key`` identifies it in the run's work file (``split/index/sample``)."""

    key: str
    messages: list[dict[str, str]]
    sample: int = 0
    seed: int | None = None


@dataclass(frozen=True)
class Sampling:
    """How the teacher samples (the same for every request of a run)."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_logprobs: int = 0


@dataclass
class TeacherReply:
    text: str
    finish_reason: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: dict[str, Any] | None = None
    cached: bool = False
    attempts: int = 1
    latency_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TeacherReply:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class TeacherFailure:
    error: str
    attempts: int = 1
    status: int | None = None


Result = TeacherReply | TeacherFailure
OnResult = Callable[[TeacherRequest, Result], None]


class Teacher(Protocol):
    def describe(self) -> dict[str, Any]:
        """What goes into the dataset's manifest (never a key)."""
        ...

    def run(self, requests: Sequence[TeacherRequest], on_result: OnResult) -> None: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


@dataclass
class _TopK:
    tokens: list[str] = field(default_factory=list)
    ids: list[int] | None = None
    lp: list[float] = field(default_factory=list)
    top_tokens: list[list[str]] = field(default_factory=list)
    top_ids: list[list[int]] | None = None
    top_lp: list[list[float]] = field(default_factory=list)


def compact_logprobs(
    tokens: Sequence[str],
    lp: Sequence[float],
    top_tokens: Sequence[Sequence[str]],
    top_lp: Sequence[Sequence[float]],
    *,
    ids: Sequence[int] | None = None,
    top_ids: Sequence[Sequence[int]] | None = None,
) -> dict[str, Any]:
    """The stored form of per-token logprobs (see the module docstring)."""

    def r(x: float) -> float:
        return round(float(x), LP_DECIMALS) if x > -1e9 else -1e9

    out: dict[str, Any] = {
        "tokens": list(tokens),
        "lp": [r(x) for x in lp],
        "top_tokens": [list(t) for t in top_tokens],
        "top_lp": [[r(x) for x in row] for row in top_lp],
    }
    if ids is not None:
        out["ids"] = [int(i) for i in ids]
    if top_ids is not None:
        out["top_ids"] = [[int(i) for i in row] for row in top_ids]
    return out


class LocalTeacher:
    """A local model artifact answering in left-padded batches (transformers ``generate``)."""

    def __init__(self, artifact: Artifact, sampling: Sampling, *, batch_size: int = 8, seed: int = 0) -> None:
        from slmops.runtimes import open_runtime

        self.artifact = artifact
        self.sampling = sampling
        self.batch_size = batch_size
        self.seed = seed
        self.rt: Any = open_runtime(artifact, runtime="torch")
        self._stats = {"requests": 0, "batches": 0, "prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0}

    def describe(self) -> dict[str, Any]:
        return {"type": "local", "digest": self.artifact.digest, "model": self.artifact.manifest.meta.get("architecture")}

    def stats(self) -> dict[str, Any]:
        return dict(self._stats)

    def close(self) -> None:
        self.rt.close()

    def run(self, requests: Sequence[TeacherRequest], on_result: OnResult) -> None:
        for start in range(0, len(requests), self.batch_size):
            batch = list(requests[start : start + self.batch_size])
            t0 = time.perf_counter()
            replies = self.generate_batch(batch)
            self._stats["batches"] += 1
            self._stats["seconds"] += time.perf_counter() - t0
            for req, rep in zip(batch, replies, strict=True):
                self._stats["requests"] += 1
                if isinstance(rep, TeacherReply):
                    self._stats["prompt_tokens"] += rep.prompt_tokens
                    self._stats["completion_tokens"] += rep.completion_tokens
                on_result(req, rep)

    def generate_batch(self, batch: Sequence[TeacherRequest]) -> list[Result]:
        """Answer ``batch`` with one ``generate`` call (left padding, per-step logits for top-k)."""
        torch = require("torch", extra="train", purpose="a local teacher")
        rt, s = self.rt, self.sampling
        prompts = [rt.encode_prompt(rt.apply_chat_template(r.messages, add_generation_prompt=True)) for r in batch]
        width = max(len(p) for p in prompts)
        budget = min(s.max_tokens, rt.context_length - width)
        if budget < 1:
            return [TeacherFailure(f"the prompt ({len(p)} tokens) fills the teacher's context of {rt.context_length}") for p in prompts]
        tok = rt.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else next(iter(rt.eos_token_ids))
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], dtype=torch.long, device=rt.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long, device=rt.device)
        eos = sorted(rt.eos_token_ids)
        kwargs: dict[str, Any] = {
            "max_new_tokens": budget,
            "do_sample": s.temperature > 0,
            "eos_token_id": eos,
            "pad_token_id": pad,
            "return_dict_in_generate": True,
            "output_logits": s.top_logprobs > 0,
        }
        if s.temperature > 0:
            kwargs.update(temperature=s.temperature, top_p=s.top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed((self.seed * 1_000_003 + (batch[0].seed or 0)) % (2**31))
            out = rt.model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
        seqs = out.sequences[:, width:].tolist()
        logits = torch.stack(out.logits, dim=1).float() if s.top_logprobs > 0 else None
        results: list[Result] = []
        for row, (p, ids) in enumerate(zip(prompts, seqs, strict=True)):
            stop = next((i for i, t in enumerate(ids) if t in rt.eos_token_ids), None)
            kept = ids[: stop + 1] if stop is not None else ids
            text_ids = kept[:-1] if stop is not None else kept
            lp = None
            if logits is not None and kept:
                lps = torch.log_softmax(logits[row, : len(kept)], dim=-1)
                top = lps.topk(s.top_logprobs, dim=-1)
                chosen = lps.gather(-1, torch.tensor(kept, device=lps.device).unsqueeze(-1)).squeeze(-1)
                top_ids = top.indices.tolist()
                lp = compact_logprobs(
                    [rt.detokenize([t], skip_special_tokens=False) for t in kept],
                    chosen.tolist(),
                    [[rt.detokenize([t], skip_special_tokens=False) for t in r] for r in top_ids],
                    top.values.tolist(),
                    ids=kept,
                    top_ids=top_ids,
                )
            results.append(
                TeacherReply(
                    text=rt.detokenize(text_ids),
                    finish_reason="stop" if stop is not None else "length",
                    prompt_tokens=len(p),
                    completion_tokens=len(kept),
                    logprobs=lp,
                )
            )
        return results
