"""The ``bench`` stage's configuration: the local grid (prompt × output lengths) and the HTTP load settings."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

LOCAL_PROMPTS, LOCAL_OUTPUTS = [32, 128], [16, 64]
HTTP_PROMPTS, HTTP_OUTPUTS = [128], [64]


class BenchConfig(BaseModel):
    """How to benchmark: a grid on a local runtime, or concurrency levels against a URL."""

    model_config = ConfigDict(extra="forbid")

    prompt_tokens: list[int] | None = Field(None, description="Prompt lengths in tokens (default 32,128 locally; 128 over HTTP, in words)")
    output_tokens: list[int] | None = Field(None, description="Output lengths in tokens (default 16,64 locally; 64 over HTTP)")
    warmup: int = Field(1, ge=0, le=100, description="Untimed runs before each grid cell (or concurrency level)")
    repetitions: int = Field(3, ge=1, le=1000, description="Timed runs per grid cell (local)")
    runtime: str = Field("auto", description="Local runtime: auto, torch, ort-genai or llamacpp")
    isolate: bool = Field(True, description="Measure a local model in a fresh process, so peak RSS and load time are its own")
    url: str | None = Field(None, description="Benchmark an OpenAI-compatible server at this URL")
    model_name: str | None = Field(None, description="Model name to request from --url (default: the first it lists)")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key for --url")
    concurrency: list[int] = Field(default_factory=lambda: [1, 2, 4, 8], description="Concurrent requests per level (HTTP)")
    requests: int = Field(32, ge=1, le=100_000, description="Requests per concurrency level (HTTP)")
    slo: dict[str, float] = Field(default_factory=dict, description="SLOs in seconds (ttft, tpot, itl, e2e) for goodput")
    max_duration_s: float = Field(300.0, gt=0, le=86_400, description="Time limit per concurrency level; unfinished requests are cancelled")
    request_timeout_s: float = Field(120.0, gt=0, description="Timeout of one HTTP request, in seconds")
    ignore_eos: bool = Field(False, description="Ask the server to ignore EOS (vLLM / slmops serve extension) for exact output lengths")

    @field_validator("prompt_tokens", "output_tokens", "concurrency")
    @classmethod
    def _positive(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(x < 1 for x in v)):
            raise ValueError("give one or more positive numbers")
        return v

    def grid(self) -> list[tuple[int, int]]:
        """(prompt, output) pairs, with the defaults for a local or an HTTP target."""
        prompts = self.prompt_tokens or (HTTP_PROMPTS if self.url else LOCAL_PROMPTS)
        outputs = self.output_tokens or (HTTP_OUTPUTS if self.url else LOCAL_OUTPUTS)
        return [(p, o) for p in prompts for o in outputs]
