"""Configs of the distillation stages.

Fields that change the result (teacher, prompts, sampling, checks) are part of the runner's cache
key and land in the manifest. What only changes *how* a run goes — concurrency, rate limit,
timeouts, retries, prices, batch size, executor, the API key's variable name — is not config but
the stage's run options (:class:`slmops.stage.RunOptions`: ``run_stage(options=)``, the CLI flags,
a recipe step's ``options:``); a resumed run with other options is the same run. The API key itself
is never a value anywhere: only the *name* of the environment variable that holds it.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slmops.distill.prompting import TaskType
from slmops.distill.validate import ValidationConfig

_KEYISH = re.compile(r"(key|token|secret|sig|password|auth)", re.IGNORECASE)
TEACHER_TIMEOUT_S = 60.0  # seconds per HTTP request to a teacher, unless the run options set request_timeout_s
TEACHER_BATCH_SIZE = 8  # prompts per batch of a local teacher, unless the run options set batch_size


class GenerateConfig(BaseModel):
    """``distill.generate``: who answers, what is asked, how answers are checked, how requests are paced."""

    model_config = ConfigDict(extra="forbid")

    # -- teacher (an endpoint; a local teacher is the stage's ``teacher`` input instead) ----------
    base_url: str | None = Field(
        None, description="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 (unset: the local --teacher model)"
    )
    model: str | None = Field(None, description="Model name at the endpoint (--model)")
    # -- prompts -----------------------------------------------------------------------------
    task: TaskType = Field(
        "conversation", description="Task type: conversation, qa, classification, extraction (JSON), summarization, math"
    )
    system_prompt: str | None = Field(None, description="System prompt for every request (replaces the prompts' own)")
    chain_of_thought: bool = Field(False, description="Ask the teacher to reason first; keep only its final answer as the target")
    samples: int = Field(1, ge=1, le=64, description="Answers per prompt")
    temperature: float = Field(0.0, ge=0, le=2, description="Teacher sampling temperature (0 = greedy)")
    top_p: float = Field(1.0, gt=0, le=1, description="Teacher nucleus sampling")
    max_tokens: int = Field(256, ge=1, le=65536, description="Most tokens per answer (longer answers are 'truncated' and dropped)")
    top_logprobs: int = Field(0, ge=0, le=20, description="Keep the top-k logprobs of every answer token (for logit KD); 0 = off")
    seed: int = Field(0, description="Seed sent with each request (plus the sample index)")
    splits: list[str] | None = Field(None, description="Splits of the prompts dataset to answer (default: all)")
    limit: int | None = Field(None, ge=1, description="Answer at most this many prompts per split (for a trial run)")
    validation: ValidationConfig = Field(default_factory=ValidationConfig, description="Checks on the answers")

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{v!r} is not an http(s) URL (e.g. http://127.0.0.1:8000/v1)")
        if parts.username or parts.password or any(_KEYISH.search(k) for k, _ in parse_qsl(parts.query)):
            raise ValueError(
                "the URL must not carry credentials (it is recorded in the manifest); put the key in an "
                "environment variable and name it with --api-key-env (a run option)"
            )
        path = parts.path.rstrip("/").removesuffix("/chat/completions")
        return f"{parts.scheme}://{parts.netloc}{path}" + (f"?{parts.query}" if parts.query else "")

    @model_validator(mode="after")
    def _check(self) -> GenerateConfig:
        if self.base_url and not self.model:
            raise ValueError("--model is required with --base-url (the model name at the endpoint)")
        if self.chain_of_thought and self.top_logprobs:
            raise ValueError(
                "--top-logprobs cannot be combined with --chain-of-thought (the logprobs would cover the reasoning, not the kept answer)"
            )
        return self
