"""The ``eval`` stage's configuration and the metric catalogue (names, what each needs, which way is better)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slmops.errors import ConfigError


@dataclass(frozen=True)
class MetricSpec:
    name: str
    needs: str  # reference | label | output | local | embedder | judge
    higher_is_better: bool
    description: str


METRICS: dict[str, MetricSpec] = {m.name: m for m in (
    MetricSpec("exact_match", "reference", True, "normalised answer equals the reference (SQuAD)"),
    MetricSpec("token_f1", "reference", True, "token-overlap F1 with the reference (SQuAD)"),
    MetricSpec("rouge_l", "reference", True, "ROUGE-L F-measure (longest common subsequence)"),
    MetricSpec("bleu", "reference", True, "corpus BLEU-4 in [0, 1] (sacreBLEU 13a tokenisation)"),
    MetricSpec("accuracy", "label", True, "answer equals the record's label"),
    MetricSpec("json_valid", "output", True, "answer is a JSON object or array"),
    MetricSpec("json_schema", "output", True, "answer is JSON satisfying --schema"),
    MetricSpec("json_field_match", "reference", True, "share of JSON fields equal to the reference's"),
    MetricSpec("perplexity", "local", False, "perplexity of the reference answer (local runtimes only)"),
    MetricSpec("similarity", "embedder", True, "cosine similarity of sentence embeddings (all-MiniLM-L6-v2)"),
    MetricSpec("judge", "judge", True, "LLM-as-judge scores 1-5 per rubric criterion (judge_<criterion>)"),
)}
GENERATION_FREE = frozenset({"perplexity"})


def higher_is_better(metric: str) -> bool:
    """Direction of a reported metric name (``judge_relevance`` counts as judge)."""
    spec = METRICS.get("judge" if metric.startswith("judge_") else metric)
    return spec.higher_is_better if spec else True


class TargetConfig(BaseModel):
    """What is evaluated or validated: a local model on a runtime, or an OpenAI-compatible server (``eval`` and ``validate``)."""

    model_config = ConfigDict(extra="forbid")

    runtime: str = Field("auto", description="Local runtime: auto, torch, ort-genai or llamacpp")
    url: str | None = Field(None, description="Talk to an OpenAI-compatible server at this URL instead of a local model")
    model_name: str | None = Field(None, description="Model name to request from --url (default: the first it lists)")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key for --url (the key is never stored)")


class EvalConfig(TargetConfig):
    """How to evaluate: which metrics, on which records, generating how, against which target."""

    metrics: list[str] = Field(default_factory=lambda: ["exact_match", "token_f1"], description=f"Metrics: {', '.join(METRICS)}")
    split: str = Field("auto", description="Dataset split to evaluate; auto = test, else the unsplit data, else validation")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N records of the split")
    max_tokens: int = Field(128, ge=1, le=32768, description="Most tokens generated per answer")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Sampling temperature (0 = greedy, reproducible)")
    seed: int | None = Field(0, description="Sampling seed")
    stop: list[str] = Field(default_factory=list, description="Stop strings")
    request_timeout_s: float = Field(120.0, gt=0, description="Timeout of one HTTP request, in seconds")
    batch_size: int = Field(8, ge=1, le=1024, description="Examples per batch (checkpointed for resume; concurrent requests for --url)")
    log_samples: bool = Field(False, description="Save every example's prompt, output and scores with the report (samples.jsonl)")
    json_schema: dict[str, Any] | None = Field(None, description="JSON Schema for json_schema / json_field_match")
    json_fields: list[str] | None = Field(None, description="Fields compared by json_field_match (default: schema properties or reference keys)")
    embedding_model: str | None = Field(None, description="Local sentence-embedding model folder for similarity (default: all-MiniLM-L6-v2)")
    perplexity_window: int | None = Field(None, ge=2, description="Sliding-window size for perplexity (default: the model's context)")
    judge_url: str | None = Field(None, description="OpenAI-compatible endpoint of the judge model (for the judge metric)")
    judge_model: str | None = Field(None, description="Judge model name at --judge-url (default: the first it lists)")
    judge_api_key_env: str | None = Field(None, description="Environment variable holding the judge's API key")
    judge_criteria: list[str] | None = Field(None, description="Built-in rubric criteria to score: relevance, coherence")
    judge_rubric: dict[str, str] | None = Field(None, description="Custom rubric: criterion name -> description")
    executor: Literal["local", "ray"] = Field(
        "local", exclude=True, description="local: answer here; ray: shard the examples over Ray actors (--workers); not in the cache key")
    workers: int = Field(1, ge=1, le=1024, exclude=True, description="Ray actors (shards) with --executor ray")
    ray_address: str | None = Field(None, exclude=True, description="Ray cluster for --executor ray (default RAY_ADDRESS, else a local one)")

    @field_validator("metrics")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        names = list(dict.fromkeys(m.strip() for m in v if m.strip()))
        unknown = [m for m in names if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")
        if not names:
            raise ValueError("give at least one metric")
        return names

    @model_validator(mode="after")
    def _consistent(self) -> EvalConfig:
        if "judge" in self.metrics and not self.judge_url:
            raise ValueError("the judge metric needs judge_url (--judge-url http://host:port/v1)")
        if "json_schema" in self.metrics and not self.json_schema:
            raise ValueError("the json_schema metric needs a schema (--schema FILE)")
        if self.json_schema is not None:
            from slmops.evaluate.jsonmetrics import check_schema

            try:
                check_schema(self.json_schema)
            except ConfigError as exc:
                raise ValueError(exc.message) from None
        return self

    @property
    def generates(self) -> bool:
        return any(m not in GENERATION_FREE for m in self.metrics)
