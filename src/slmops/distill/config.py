"""Configs of the distillation stages.

Fields that change the result (teacher, prompts, sampling, checks) are part of the runner's cache
key and land in the manifest. Fields that only change *how* a run goes — concurrency, rate limit,
timeouts, retries, prices, batch size, the API key's variable name — are declared with
``exclude=True``: they are validated like the others (so flags, YAML and recipes set them the same
way), but stay out of the cache key and the manifest's config; a resumed run with other settings
is the same run. They are recorded in the artifact's ``meta`` instead. The API key itself is never
a config value: only the *name* of the environment variable that holds it.
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slmops.distill.prompting import TaskType
from slmops.distill.validate import ValidationConfig

_KEYISH = re.compile(r"(key|token|secret|sig|password|auth)", re.IGNORECASE)
RUN_OPTIONS = (
    "api_key_env",
    "api_key_header",
    "concurrency",
    "rpm",
    "timeout_s",
    "max_retries",
    "backoff_base_s",
    "backoff_max_s",
    "cache",
    "price_prompt_per_1m",
    "price_completion_per_1m",
    "min_success_ratio",
    "batch_size",
    "keep_work",
    "executor",
    "workers",
)


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
    # -- how requests run (not cache-keyed, see the module docstring) ---------------------------
    api_key_env: str | None = Field(None, exclude=True, description="Name of the environment variable holding the API key")
    api_key_header: Literal["authorization", "api-key"] = Field(
        "authorization", exclude=True, description="Send the key as 'Authorization: Bearer' (OpenAI) or 'api-key' (Azure)"
    )
    concurrency: int = Field(4, ge=1, le=256, exclude=True, description="Requests in flight at once")
    rpm: float | None = Field(None, gt=0, exclude=True, description="Requests per minute at most (token bucket)")
    timeout_s: float = Field(60.0, gt=0, exclude=True, description="Timeout of one HTTP request in seconds")
    max_retries: int = Field(5, ge=0, le=50, exclude=True, description="Retries on 429/5xx/timeouts/connection errors")
    backoff_base_s: float = Field(1.0, ge=0, exclude=True, description="First retry delay bound; doubles each retry (full jitter)")
    backoff_max_s: float = Field(30.0, ge=0, exclude=True, description="Largest retry delay bound")
    cache: bool = Field(True, exclude=True, description="Reuse cached teacher responses ($SLMOPS_HOME/cache/teacher)")
    price_prompt_per_1m: float | None = Field(None, ge=0, exclude=True, description="Price per million prompt tokens (for the cost metric)")
    price_completion_per_1m: float | None = Field(None, ge=0, exclude=True, description="Price per million completion tokens")
    min_success_ratio: float = Field(
        0.95, ge=0, le=1, exclude=True, description="Fail the run when fewer requests than this share got an answer"
    )
    batch_size: int = Field(8, ge=1, le=1024, exclude=True, description="Prompts per batch for a local teacher")
    keep_work: bool = Field(False, exclude=True, description="Keep the run's work file after success (default: delete it)")
    executor: Literal["local", "ray"] = Field(
        "local", exclude=True, description="local: this process asks the teacher; ray: prompts are sharded over Ray actors (--workers)")
    workers: int = Field(1, ge=1, le=1024, exclude=True, description="Ray actors (shards) with --executor ray")
    ray_address: str | None = Field(None, exclude=True, description="Ray cluster for --executor ray (default RAY_ADDRESS, else a local one)")

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
                "environment variable and name it with --api-key-env"
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

    def run_options(self) -> dict[str, Any]:
        """The excluded (not cache-keyed) settings, for the manifest's meta (no secret in them)."""
        return {k: getattr(self, k) for k in RUN_OPTIONS}
