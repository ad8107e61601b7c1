"""The data stages: ``data.import``, ``data.split`` and ``data.dedup`` (registered with the runner).

Each writes normalised JSONL (schema ``slmops.records/1``, see :mod:`slmops.data.records`) into
its output folder; the runner caches, commits and records lineage. ``data.import`` fingerprints
the source file's bytes, so editing the file misses the cache even when the path is unchanged.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from slmops.data.dedup import dedup_records
from slmops.data.io import dataset_splits, load_records, read_dataset, write_jsonl
from slmops.data.readers import resolve_input
from slmops.data.records import SCHEMA, Record
from slmops.data.split import MISSING, SPLITS, label_of, split_counts, split_records
from slmops.errors import ConfigError
from slmops.stage import StageContext, StageOutput, stage
from slmops.store.artifact import Artifact, file_digest, write_json_atomic

log = logging.getLogger(__name__)

RecordKind = Literal["chat", "instruction", "prompt", "text"]


# -- data.import ------------------------------------------------------------------------------
class ImportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="The data file to import (.jsonl, .json, .csv or .parquet)")
    format: Literal["auto", "jsonl", "json", "csv", "parquet"] = Field(
        "auto", description="File format; auto picks it from the file extension"
    )
    kind: RecordKind | None = Field(
        None, description="Record kind for every row (chat, instruction, prompt, text); detected per row when unset"
    )
    skip_invalid: bool = Field(False, description="Leave invalid records out (counted and reported) instead of failing")
    field_map: dict[str, str] = Field(
        default_factory=dict, description="Rename fields before validation, e.g. question=input answer=output"
    )


def _source_fingerprint(cfg: ImportConfig) -> str:
    return file_digest(resolve_input(cfg.path))


@stage("data.import", config=ImportConfig, kind="dataset", format="jsonl", fingerprint=_source_fingerprint)
def import_data(inputs: dict[str, Artifact], cfg: ImportConfig, ctx: StageContext) -> StageOutput:
    """Import a JSONL/JSON/CSV/Parquet file as a dataset of validated, normalised records."""
    source = resolve_input(cfg.path)
    result = load_records(cfg.path, kind=cfg.kind, format=cfg.format, skip_invalid=cfg.skip_invalid, field_map=cfg.field_map)
    write_jsonl(result.records, ctx.out / "data.jsonl")
    if result.errors:
        # keep the list of what was left out with the dataset (file name only, so the digest
        # does not depend on where the source file lay)
        errors = [dict(e.to_dict(), file=source.name) for e in result.errors]
        write_json_atomic(ctx.out / "import_errors.json", {"source": source.name, "invalid": len(errors), "errors": errors})
    return StageOutput(
        metrics={"records": len(result.records), "invalid": len(result.errors)},
        meta={
            "schema": SCHEMA,
            "kinds": result.counts["kinds"],
            "source": source.name,
            "source_format": result.counts["format"],
            "rows": result.counts["rows"],
        },
    )


# -- data.split -------------------------------------------------------------------------------
class SplitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train: float = Field(0.8, ge=0, le=1, description="Share of records for the train split")
    validation: float = Field(0.1, ge=0, le=1, description="Share of records for the validation split")
    test: float = Field(0.1, ge=0, le=1, description="Share of records for the test split")
    seed: int = Field(0, description="Seed for the (input-order independent) shuffle")
    stratify_by: str | None = Field(
        None, description="Keep this field's value distribution in every split: 'label' or a meta key (e.g. topic)"
    )

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitConfig:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must sum to 1, not {total:g}")
        if self.train <= 0:
            raise ValueError("train must be above 0")
        return self


@stage("data.split", config=SplitConfig, kind="dataset", format="jsonl", inputs=("data",))
def split_data(inputs: dict[str, Artifact], cfg: SplitConfig, ctx: StageContext) -> StageOutput:
    """Split a dataset into train/validation/test (deterministic, optionally stratified)."""
    records = read_dataset(inputs["data"])
    if cfg.stratify_by and all(label_of(r, cfg.stratify_by) == MISSING for r in records):
        raise ConfigError(
            f"--stratify-by {cfg.stratify_by}: no record has this field",
            fix="use 'label' or a key that records carry under 'meta', or drop --stratify-by",
        )
    result = split_records(
        records, ratios={"train": cfg.train, "validation": cfg.validation, "test": cfg.test}, seed=cfg.seed, stratify_by=cfg.stratify_by
    )
    for name in SPLITS:
        write_jsonl(result.splits[name], ctx.out / f"{name}.jsonl")
    counts = split_counts(result)
    return StageOutput(
        metrics={name: result.counts[name] for name in SPLITS},
        meta={"schema": SCHEMA, "splits": list(SPLITS), "counts": counts, "stratify_by": cfg.stratify_by, "warnings": result.warnings},
    )


# -- data.dedup -------------------------------------------------------------------------------
class DedupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    exact: bool = Field(True, description="Remove records whose normalised text equals an earlier one")
    near: bool = Field(True, description="Remove near duplicates (MinHash + LSH, verified with true Jaccard)")
    threshold: float = Field(0.85, gt=0, le=1, description="Jaccard similarity at or above which a record is a near duplicate")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (more: more exact candidate search, slower)")
    shingle: Literal["char", "word"] = Field("char", description="Shingle unit for near duplicates: char n-grams or word n-grams")
    ngram: int = Field(5, ge=1, le=32, description="Shingle length (characters or words)")
    seed: int = Field(0, description="Seed of the MinHash permutations")

    @model_validator(mode="after")
    def _something_to_do(self) -> DedupConfig:
        if not (self.exact or self.near):
            raise ValueError("exact and near are both off: nothing to do")
        return self


@stage("data.dedup", config=DedupConfig, kind="dataset", format="jsonl", inputs=("data",))
def dedup_data(inputs: dict[str, Artifact], cfg: DedupConfig, ctx: StageContext) -> StageOutput:
    """Remove exact and near-duplicate records (across all splits of a split dataset)."""
    art = inputs["data"]
    groups: dict[str, list[Record]] = {name: read_dataset(art, None if name == "data" else name) for name in dataset_splits(art)}
    flat: list[Record] = []
    owner: list[tuple[str, int]] = []
    for name, recs in groups.items():
        flat.extend(recs)
        owner.extend((name, i) for i in range(len(recs)))
    result = dedup_records(
        flat,
        exact=cfg.exact,
        near=cfg.near,
        threshold=cfg.threshold,
        num_perm=cfg.num_perm,
        shingle=cfg.shingle,
        ngram=cfg.ngram,
        seed=cfg.seed,
    )
    gone = {r.index for r in result.removed}
    kept_counts: dict[str, int] = {}
    for name, recs in groups.items():
        kept = [rec for k, rec in enumerate(flat) if owner[k][0] == name and k not in gone]
        write_jsonl(kept, ctx.out / f"{name}.jsonl")
        kept_counts[name] = len(kept)
        log.info("dedup %s: kept %d of %d", name, len(kept), len(recs))
    report = result.report()
    if len(groups) > 1:
        for entry in report["removed"]:
            entry["split"], entry["split_index"] = owner[entry["index"]]
            entry["duplicate_of_split"], entry["duplicate_of_split_index"] = owner[entry["duplicate_of"]]
    write_json_atomic(ctx.out / "dedup_report.json", report)
    c = result.counts
    return StageOutput(
        metrics={
            "records": c["kept"],
            "removed": c["removed_exact"] + c["removed_near"],
            "removed_exact": c["removed_exact"],
            "removed_near": c["removed_near"],
        },
        meta={"schema": SCHEMA, "splits": list(groups), "counts": kept_counts},
    )
