"""The tokenizer half of a GGUF file: tokens, token types, merges or scores, special tokens, chat template.

Two vocabularies are read, from the model folder's own files (never through transformers, so what
is written is exactly what the files say):

* **byte-level BPE** (``tokenizer.json`` with a BPE model and a ByteLevel pre-tokenizer: GPT-2,
  Llama 3, Qwen2, SmolLM and slmops' own tokenizers) → ``tokenizer.ggml.model = "gpt2"`` with the
  merges and a pre-tokenizer name llama.cpp knows, chosen from the split regex (Llama 3's regex →
  ``llama-bpe`` when the BPE ignores merges for whole-word hits, as Llama 3 does, else
  ``smaug-bpe``, which is the same regex without that shortcut; Qwen2's → ``qwen2``; plain GPT-2
  byte-level → ``gpt-2``; single digits then GPT-2 byte-level (SmolLM) → ``smollm``).
* **SentencePiece** (``tokenizer.model``: Llama 2, Mistral, TinyLlama, Phi-3) → ``"llama"`` with
  scores and the piece types SentencePiece records (normal, unknown, control, user-defined,
  unused, byte).

Added tokens become CONTROL (special) or USER_DEFINED tokens. The token list is then fitted to the
model's embedding: padded with UNUSED ``[PADn]`` tokens when the embedding is larger (as Qwen2
checkpoints are), and refused — or, when asked, cut — when the tokenizer has tokens the embedding
has no row for (a Qwen2 tokenizer saved by transformers 5 can gain one).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmops._optional import require
from slmops.errors import ConfigError, DataError
from slmops.models.tokenizer import LLAMA3_SPLIT, QWEN2_SPLIT, strip_generation_tags

log = logging.getLogger(__name__)

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
#: Custom key: every token id generation stops on (generation_config.json's eos list), for slmops' runtime.
STOP_IDS_KEY = "slmops.stop_token_ids"
_GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
#: pre-tokenizer names this converter can choose; others may be forced with ``pre_tokenizer=``.
KNOWN_PRE = ("llama-bpe", "smaug-bpe", "qwen2", "gpt-2", "smollm", "default")
#: llama.cpp pre-tokenizer name -> (tokenizer.json pre-tokenizer steps as :func:`_steps` signs them,
#: the BPE model's ``ignore_merges`` or None when it does not matter). Read both ways: HF → GGUF
#: (:func:`detect_pre_tokenizer`) and GGUF → HF (:mod:`slmops.models.gguf_tokenizer`).
PRE_TOKENIZERS: dict[str, tuple[tuple[str, ...], bool | None]] = {
    "llama-bpe": (("split:" + LLAMA3_SPLIT, "bytelevel"), True),
    "smaug-bpe": (("split:" + LLAMA3_SPLIT, "bytelevel"), False),
    "qwen2": (("split:" + QWEN2_SPLIT, "bytelevel"), None),
    "gpt-2": (("bytelevel+regex",), None),
    "smollm": (("digits", "bytelevel+regex"), None),
}


@dataclass
class GGUFVocab:
    """Everything llama.cpp needs to tokenize like the original tokenizer."""

    model: str
    tokens: list[str]
    types: list[int]
    pre: str | None = None
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool | None = None
    remove_extra_whitespaces: bool | None = None
    chat_template: str | None = None
    named_templates: dict[str, str] = field(default_factory=dict)
    stop_ids: list[int] = field(default_factory=list)
    rstrip_specials: bool = False

    @property
    def size(self) -> int:
        return len(self.tokens)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path.name} in {path.parent} is not valid JSON", why=str(exc).splitlines()[0], fix="restore the file from the original model") from exc


def _content(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def read_vocab(folder: Path, *, pre_tokenizer: str | None = None) -> GGUFVocab:
    """The GGUF vocabulary of a model folder; :class:`ConfigError` when it has no (usable) tokenizer."""
    tj_path, spm_path = folder / "tokenizer.json", folder / "tokenizer.model"
    tj = _read_json(tj_path) if tj_path.is_file() else None
    if tj is not None and not isinstance(tj, dict):
        raise DataError(f"{tj_path} is not a tokenizer.json", why="its top level is not an object", fix="restore the file from the original model")
    tj_model = (tj or {}).get("model") or {}
    spm_style = tj is None or (tj_model.get("type") == "BPE" and tj_model.get("byte_fallback")) or tj_model.get("type") == "Unigram"
    if spm_style and spm_path.is_file():
        vocab = _spm_vocab(spm_path, tj)
    elif tj is not None:
        vocab = _bpe_vocab(tj, tj_path, pre_tokenizer)
    else:
        raise ConfigError(
            f"model folder {folder} has no tokenizer",
            why="GGUF embeds the tokenizer, and neither tokenizer.json nor tokenizer.model is there",
            fix="copy the tokenizer files of the original model into the folder (tokenizer.save_pretrained) and import it again",
        )
    _special_tokens(vocab, folder, tj)
    _chat_templates(vocab, folder)
    return vocab


# -- byte-level BPE --------------------------------------------------------------------------------
def _steps(pre: Any) -> list[str] | None:
    """The pre-tokenizer as a list of step signatures (``split:<regex>``, ``bytelevel[+regex]``,
    ``digits``); None when it holds a step this converter does not know."""
    steps = pre.get("pretokenizers", []) if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    out: list[str] = []
    for st in steps:
        kind = st.get("type") if isinstance(st, dict) else None
        if kind == "Split" and isinstance(st.get("pattern"), dict) and "Regex" in st["pattern"] and st.get("behavior") == "Isolated":
            out.append("split:" + st["pattern"]["Regex"])
        elif kind == "ByteLevel" and not st.get("add_prefix_space"):
            out.append("bytelevel+regex" if st.get("use_regex", True) else "bytelevel")
        elif kind == "Digits" and st.get("individual_digits"):
            out.append("digits")
        else:
            return None
    return out


def detect_pre_tokenizer(tj: dict[str, Any]) -> str | None:
    """The llama.cpp pre-tokenizer name whose rules equal ``tokenizer.json``'s; None when none does."""
    steps = _steps(tj.get("pre_tokenizer"))
    ignore_merges = bool((tj.get("model") or {}).get("ignore_merges"))
    for name, (want, ignore) in PRE_TOKENIZERS.items():
        if steps == list(want) and ignore in (None, ignore_merges):
            return name
    if steps == ["split:" + _GPT2_SPLIT, "bytelevel"]:
        return "gpt-2"
    return None


def _is_byte_level(tj: dict[str, Any]) -> bool:
    def has(node: Any) -> bool:
        if isinstance(node, dict):
            return node.get("type") == "ByteLevel" or any(has(v) for v in node.values())
        if isinstance(node, list):
            return any(has(v) for v in node)
        return False

    return has(tj.get("pre_tokenizer")) or has(tj.get("decoder"))


def _bpe_vocab(tj: dict[str, Any], path: Path, pre_tokenizer: str | None) -> GGUFVocab:
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise ConfigError(
            f"{path.name} holds a {model.get('type') or 'unknown'} tokenizer, which slmops cannot put in a GGUF",
            why="the converter writes byte-level BPE (tokenizer.json) and SentencePiece (tokenizer.model) vocabularies",
            fix="add the model's tokenizer.model (SentencePiece), or convert with llama.cpp's convert_hf_to_gguf.py",
        )
    if not _is_byte_level(tj):
        raise ConfigError(
            f"{path.name} is a BPE tokenizer without byte-level encoding",
            why="llama.cpp's BPE ('gpt2') tokenizer is byte-level; a SentencePiece-style BPE needs its tokenizer.model",
            fix="add the model's tokenizer.model next to tokenizer.json",
        )
    pre = pre_tokenizer or detect_pre_tokenizer(tj)
    if pre is None:
        raise ConfigError(
            f"the pre-tokenizer of {path} is not one slmops recognises",
            why="llama.cpp re-implements each pre-tokenizer by name, and this split regex matches none of llama-bpe, qwen2 or gpt-2",
            fix=f"pass --pre-tokenizer NAME with the llama.cpp name of a pre-tokenizer using the same regex (e.g. {', '.join(KNOWN_PRE[:4])})",
        )
    added = [a for a in tj.get("added_tokens") or [] if isinstance(a, dict) and isinstance(a.get("id"), int)]
    ids = [int(i) for i in model["vocab"].values()] + [a["id"] for a in added]
    n = max(ids) + 1 if ids else 0
    tokens: list[str | None] = [None] * n
    types = [NORMAL] * n
    for tok, i in model["vocab"].items():
        tokens[int(i)] = tok
    for a in added:
        tokens[a["id"]] = str(a.get("content", ""))
        types[a["id"]] = CONTROL if a.get("special") else USER_DEFINED
    for i, t in enumerate(tokens):
        if t is None:
            tokens[i], types[i] = f"[PAD{i}]", UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    rstrip = any(a.get("rstrip") for a in added if a.get("special"))
    return GGUFVocab(model="gpt2", pre=pre, tokens=[str(t) for t in tokens], types=types, merges=merges, rstrip_specials=rstrip)


# -- SentencePiece ---------------------------------------------------------------------------------
def _spm_vocab(path: Path, tj: dict[str, Any] | None) -> GGUFVocab:
    pb2 = require("sentencepiece.sentencepiece_model_pb2", extra="gguf", purpose="reading a SentencePiece tokenizer.model")
    proto = pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf raises its own DecodeError
        raise DataError(f"{path} is not a SentencePiece model", why=str(exc) or type(exc).__name__, fix="restore tokenizer.model from the original model") from exc
    if not proto.pieces:
        raise DataError(f"{path} holds no SentencePiece pieces", fix="restore tokenizer.model from the original model")
    if proto.trainer_spec.model_type not in (0, 2):  # 2 = BPE (Llama/Mistral); unigram needs llama.cpp's t5 tokenizer
        raise ConfigError(
            f"{path.name} is a SentencePiece unigram model",
            why="slmops writes SentencePiece BPE vocabularies (Llama 2, Mistral, Phi-3); unigram ones (T5) are not supported",
            fix="convert this model with llama.cpp's convert_hf_to_gguf.py",
        )
    tokens = [p.piece for p in proto.pieces]
    scores = [float(p.score) for p in proto.pieces]
    types = [int(p.type) if 1 <= int(p.type) <= 6 else NORMAL for p in proto.pieces]
    rstrip = False
    for a in sorted(((tj or {}).get("added_tokens") or []), key=lambda a: a.get("id", 0)):
        i, content = a.get("id"), str(a.get("content", ""))
        if not isinstance(i, int) or i < len(tokens):
            if isinstance(i, int) and a.get("special") and types[i] == NORMAL:
                types[i] = CONTROL
            continue
        while len(tokens) < i:
            tokens.append(f"[PAD{len(tokens)}]"), scores.append(-1000.0), types.append(UNUSED)
        tokens.append(content), scores.append(-1000.0), types.append(CONTROL if a.get("special") else USER_DEFINED)
        rstrip = rstrip or bool(a.get("rstrip") and a.get("special"))
    norm = proto.normalizer_spec if proto.HasField("normalizer_spec") else None
    if norm is not None and norm.name not in ("identity", ""):
        log.warning("tokenizer.model normalizes text with %r, which llama.cpp does not implement; tokenization may differ", norm.name)
    return GGUFVocab(model="llama", pre="default", tokens=tokens, types=types, scores=scores, add_bos=True,
                     add_space_prefix=bool(norm.add_dummy_prefix) if norm is not None else True,
                     remove_extra_whitespaces=bool(norm.remove_extra_whitespaces) if norm is not None else None, rstrip_specials=rstrip)


# -- special tokens and templates ------------------------------------------------------------------
def _special_tokens(vocab: GGUFVocab, folder: Path, tj: dict[str, Any] | None) -> None:
    cfg_path = folder / "tokenizer_config.json"
    tcfg = _read_json(cfg_path) if cfg_path.is_file() else {}
    stm_path = folder / "special_tokens_map.json"
    stm = _read_json(stm_path) if stm_path.is_file() else {}
    mcfg = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    index: dict[str, int] = {}
    for i, t in enumerate(vocab.tokens):
        index.setdefault(t, i)

    def lookup(key: str) -> int | None:
        for src in (tcfg, stm):
            text = _content(src.get(key)) if isinstance(src, dict) else None
            if text is not None and text in index:
                return index[text]
        value = mcfg.get(f"{key}_id") if isinstance(mcfg, dict) else None
        return value if isinstance(value, int) and 0 <= value < vocab.size else None

    vocab.bos_id, vocab.eos_id, vocab.unk_id, vocab.pad_id = lookup("bos_token"), lookup("eos_token"), lookup("unk_token"), lookup("pad_token")
    if vocab.model == "gpt2":
        post = json.dumps((tj or {}).get("post_processor") or {})
        bos_text = vocab.tokens[vocab.bos_id] if vocab.bos_id is not None else None
        default_bos = bool(bos_text and json.dumps(bos_text) in post)
        vocab.add_bos = bool(tcfg.get("add_bos_token", default_bos)) and vocab.bos_id is not None
    else:
        vocab.add_bos = bool(tcfg.get("add_bos_token", True))
    vocab.add_eos = bool(tcfg.get("add_eos_token", False))
    stops: list[int] = [vocab.eos_id] if vocab.eos_id is not None else []
    gen_path = folder / "generation_config.json"
    gen = _read_json(gen_path) if gen_path.is_file() else {}
    eos = gen.get("eos_token_id") if isinstance(gen, dict) else None
    for t in eos if isinstance(eos, list) else [eos]:
        if isinstance(t, int) and 0 <= t < vocab.size and t not in stops:
            stops.append(t)
    vocab.stop_ids = stops


def _chat_templates(vocab: GGUFVocab, folder: Path) -> None:
    cfg_path = folder / "tokenizer_config.json"
    tpl = (_read_json(cfg_path) if cfg_path.is_file() else {}).get("chat_template")
    if tpl is None and (folder / "chat_template.jinja").is_file():
        tpl = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if tpl is None and (folder / "chat_template.json").is_file():
        tpl = _read_json(folder / "chat_template.json").get("chat_template")
    if isinstance(tpl, list):
        named = {str(t.get("name")): str(t.get("template")) for t in tpl if isinstance(t, dict) and t.get("template")}
        vocab.chat_template = strip_generation_tags(named.pop("default")) if "default" in named else None
        vocab.named_templates = {k: strip_generation_tags(v) for k, v in named.items()}
    elif isinstance(tpl, str) and tpl.strip():
        vocab.chat_template = strip_generation_tags(tpl)


def warn_unsafe_template(template: str, name: str = "default") -> None:
    """Log a warning when a chat template about to be copied into a GGUF fails slmops' sandbox or budget.

    The file is still written (the template is the model's own), but llama.cpp, Ollama and other
    runtimes render it with engines of their own, without this sandbox.
    """
    from slmops.data.templates import template_problem

    problem = template_problem(template)
    if problem:
        log.warning("the %s chat template copied into the GGUF is unsafe or broken (%s); other runtimes may render it "
                    "without slmops' sandbox: review it before you distribute the file", name, problem)


# -- fitting to the embedding ----------------------------------------------------------------------
def fit_to_embedding(vocab: GGUFVocab, rows: int, *, drop_extra_tokens: bool = False) -> list[str]:
    """Make the token list exactly ``rows`` long; return the tokens dropped (if any were allowed to be)."""
    n = vocab.size
    if n < rows:
        for i in range(n, rows):
            vocab.tokens.append(f"[PAD{i}]")
            vocab.types.append(UNUSED)
            if vocab.scores is not None:
                vocab.scores.append(-1000.0)
        return []
    if n == rows:
        return []
    extra = vocab.tokens[rows:]
    shown = ", ".join(repr(t) for t in extra[:5]) + (" …" if len(extra) > 5 else "")
    needed = sorted({i for i in (vocab.bos_id, vocab.eos_id, vocab.pad_id, vocab.unk_id, *vocab.stop_ids) if i is not None and i >= rows})
    if not drop_extra_tokens or needed:
        why = f"token(s) {shown} (ids {rows}–{n - 1}) have no embedding row"
        if needed:
            why += f"; special token id(s) {needed} are among them, so they cannot be dropped"
        raise DataError(
            f"the tokenizer has {n} tokens but the model's embedding has only {rows} rows",
            why=why + " (transformers 5 can add an unknown token beyond the embedding when it saves a Qwen2 tokenizer)",
            fix="resize the embedding (model.resize_token_embeddings(len(tokenizer))) and save the model again"
            + ("" if needed else ", or pass --drop-extra-tokens to leave those tokens out of the GGUF"),
        )
    dropped = set(extra)
    del vocab.tokens[rows:], vocab.types[rows:]
    if vocab.scores is not None:
        del vocab.scores[rows:]
    vocab.merges = [m for m in vocab.merges if m.replace(" ", "", 1) not in dropped]
    log.warning("GGUF vocabulary: dropped %d token(s) beyond the embedding: %s", len(extra), shown)
    return extra


def write_vocab(writer: Any, vocab: GGUFVocab) -> None:
    """Add the tokenizer keys of ``vocab`` to a ``gguf.GGUFWriter``."""
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    for adder, value in (
        (writer.add_bos_token_id, vocab.bos_id),
        (writer.add_eos_token_id, vocab.eos_id),
        (writer.add_unk_token_id, vocab.unk_id),
        (writer.add_pad_token_id, vocab.pad_id),
    ):
        if value is not None:
            adder(value)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.remove_extra_whitespaces is not None:
        writer.add_remove_extra_whitespaces(vocab.remove_extra_whitespaces)
    if vocab.chat_template:
        for name, template in {"default": vocab.chat_template, **vocab.named_templates}.items():
            warn_unsafe_template(template, name)
        if vocab.named_templates:
            writer.add_chat_template([{"name": "default", "template": vocab.chat_template}]
                                     + [{"name": k, "template": v} for k, v in vocab.named_templates.items()])
        else:
            writer.add_chat_template(vocab.chat_template)
    if vocab.stop_ids:
        writer.add_array(STOP_IDS_KEY, [int(i) for i in vocab.stop_ids])
