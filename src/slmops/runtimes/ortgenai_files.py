"""What an ONNX Runtime GenAI model folder says about itself, read without loading the model.

:func:`locate_genai_folder` finds the folder holding ``genai_config.json`` (an ``export.onnx``
artifact, a Foundry Local package with the model one or two levels down, or any folder the model
builder wrote). :func:`read_folder` collects what the runtime needs besides the ONNX graph:

* the context length, vocabulary size and EOS ids from ``genai_config.json``;
* whether the source tokenizer adds a BOS token. ORT GenAI's tokenizer never adds one, so the
  runtime prepends it itself when ``tokenizer_config.json`` says ``add_bos_token: true`` (which
  ``export.onnx`` writes) or, for folders from elsewhere, when ``tokenizer.json``'s post-processor
  starts every sequence with the BOS token;
* the chat template (``chat_template.jinja``, else ``tokenizer_config.json``) and the special
  token strings it refers to;
* the special tokens (id → text) for decoding with ``skip_special_tokens=False``, and whether the
  tokenizer normalises text to NFC (ORT GenAI's tokenizer does not apply that normalizer);
* run-time LoRA adapters shipped in ``adapters/*.onnx_adapter``;
* for byte-level BPE tokenizers, every token's bytes, so the runtime can decode in Python (ORT
  GenAI's ``decode`` costs a few hundred microseconds per call, which streaming pays twice per token).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmops.errors import ConfigError

GENAI_CONFIG = "genai_config.json"
ADAPTER_DIR = "adapters"
ADAPTER_SUFFIX = ".onnx_adapter"


@dataclass
class GenAIFolder:
    """Facts about one ONNX Runtime GenAI model folder."""

    path: Path
    context_length: int
    vocab_size: int
    eos_token_ids: frozenset[int]
    bos_token_id: int | None
    add_bos: bool
    chat_template: str | None
    special_token_strings: dict[str, str] = field(default_factory=dict)
    special_tokens: dict[int, str] = field(default_factory=dict)
    nfc: bool = False
    adapters: dict[str, Path] = field(default_factory=dict)
    model_type: str | None = None
    byte_pieces: list[bytes | None] | None = None  # id -> bytes, for byte-level BPE tokenizers (fast decoding)


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path.name} in {path.parent}", why=str(exc), fix="re-export the model with `slmops export onnx`") from exc
    return data if isinstance(data, dict) else {}


def locate_genai_folder(path: Path) -> Path:
    """The folder with ``genai_config.json``: ``path`` itself or the single one up to two levels below."""
    path = Path(path)
    if (path / GENAI_CONFIG).is_file():
        return path
    found = sorted({p.parent for p in [*path.glob(f"*/{GENAI_CONFIG}"), *path.glob(f"*/*/{GENAI_CONFIG}")]})
    if len(found) == 1:
        return found[0]
    raise ConfigError(
        f"{path} is not an ONNX Runtime GenAI model folder",
        why="it has no genai_config.json" if not found else f"it holds {len(found)} models ({', '.join(p.name for p in found)})",
        fix="export the model with `slmops export onnx MODEL`, or point at the folder holding genai_config.json",
    )


def _token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _post_processor_adds_bos(tok: dict[str, Any], bos: str | None) -> bool:
    pp = tok.get("post_processor") or {}
    procs = pp.get("processors", [pp]) if pp.get("type") == "Sequence" else [pp]
    for p in procs:
        if p.get("type") == "TemplateProcessing":
            first = (p.get("single") or [{}])[0]
            special = first.get("SpecialToken", {}).get("id")
            return special is not None and (bos is None or special == bos)
    return False


def _is_nfc(normalizer: Any) -> bool:
    if not isinstance(normalizer, dict):
        return False
    if normalizer.get("type") == "NFC":
        return True
    return any(_is_nfc(n) for n in normalizer.get("normalizers") or [])


def _bytes_to_unicode() -> dict[str, int]:
    """GPT-2's byte ↔ printable character table (what byte-level BPE vocabularies are written in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def byte_level_pieces(tok: dict[str, Any]) -> list[bytes | None] | None:
    """Each token id's bytes for a byte-level BPE ``tokenizer.json`` (as its ByteLevel decoder maps them); None otherwise."""
    decoder, model = tok.get("decoder") or {}, tok.get("model") or {}
    if decoder.get("type") != "ByteLevel" or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        return None
    table = _bytes_to_unicode()
    strings: dict[int, str] = {int(i): t for t, i in model["vocab"].items()}
    strings.update({int(t["id"]): str(t["content"]) for t in tok.get("added_tokens") or []})
    pieces: list[bytes | None] = [None] * (max(strings) + 1 if strings else 0)
    for i, text in strings.items():
        try:
            pieces[i] = bytes(table[c] for c in text)
        except KeyError:  # a character outside the table: the decoder keeps the token's own UTF-8
            pieces[i] = text.encode("utf-8")
    return pieces


def read_folder(path: Path) -> GenAIFolder:
    """Read ``genai_config.json`` and the tokenizer files of the folder at (or under) ``path``."""
    root = locate_genai_folder(path)
    cfg = _json(root / GENAI_CONFIG).get("model") or {}
    eos = cfg.get("eos_token_id")
    eos_ids = frozenset(int(t) for t in (eos if isinstance(eos, list) else [eos]) if isinstance(t, int))
    tcfg = _json(root / "tokenizer_config.json") if (root / "tokenizer_config.json").is_file() else {}
    tok = _json(root / "tokenizer.json") if (root / "tokenizer.json").is_file() else {}
    strings = {k: s for k in ("bos_token", "eos_token", "unk_token", "pad_token") if (s := _token_text(tcfg.get(k))) is not None}
    if isinstance(tcfg.get("add_bos_token"), bool):
        add_bos = bool(tcfg["add_bos_token"])
    else:
        add_bos = _post_processor_adds_bos(tok, strings.get("bos_token"))
    template: str | None = None
    if (root / "chat_template.jinja").is_file():
        template = (root / "chat_template.jinja").read_text(encoding="utf-8")
    elif isinstance(tcfg.get("chat_template"), str):
        template = tcfg["chat_template"]
    specials = {int(t["id"]): str(t["content"]) for t in tok.get("added_tokens") or [] if t.get("special")}
    bos_id = cfg.get("bos_token_id")
    adapters = {p.name[: -len(ADAPTER_SUFFIX)]: p for p in sorted((root / ADAPTER_DIR).glob(f"*{ADAPTER_SUFFIX}"))}
    return GenAIFolder(
        path=root,
        context_length=int(cfg.get("context_length") or 2048),
        vocab_size=int(cfg.get("vocab_size") or 0),
        eos_token_ids=eos_ids,
        bos_token_id=int(bos_id) if isinstance(bos_id, int) else None,
        add_bos=add_bos and isinstance(bos_id, int),
        chat_template=template if template and template.strip() else None,
        special_token_strings=strings,
        special_tokens=specials,
        nfc=_is_nfc(tok.get("normalizer")),
        adapters=adapters,
        model_type=cfg.get("type"),
        byte_pieces=byte_level_pieces(tok),
    )
