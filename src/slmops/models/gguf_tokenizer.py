"""A GGUF file's vocabulary rebuilt as Hugging Face tokenizer files (``tokenizer.json`` + config).

The inverse of :mod:`slmops.models.gguf_vocab`, with the same tables:

* ``tokenizer.ggml.model = "gpt2"`` (byte-level BPE: GPT-2, Llama 3, Qwen2, SmolLM) → a BPE model
  with the file's tokens and merges; the pre-tokenizer is rebuilt from ``tokenizer.ggml.pre`` through
  :data:`~slmops.models.gguf_vocab.PRE_TOKENIZERS` (``smollm`` = single digits, then GPT-2's
  byte-level regex; ``llama-bpe``, ``qwen2`` … their split regex then byte-level).
* ``"llama"`` (SentencePiece BPE: Llama 2, Mistral, Phi-3) → a byte-fallback BPE whose merges come
  from the pieces' scores, with SentencePiece's ``▁`` space handling (``Metaspace``).

CONTROL tokens become special added tokens, USER_DEFINED ones plain added tokens, UNUSED padding
rows (``[PAD123]``) are left out. BOS/EOS/UNK/PAD, ``add_bos_token``/``add_eos_token`` and the chat
template come from the file's ``tokenizer.*`` keys; generation stops on EOS, EOT and slmops' own
``slmops.stop_token_ids``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slmops._optional import require
from slmops.errors import ConfigError, DataError
from slmops.models.gguf_file import GGUFFile
from slmops.models.gguf_vocab import BYTE, CONTROL, PRE_TOKENIZERS, STOP_IDS_KEY, UNUSED, USER_DEFINED
from slmops.models.tokenizer import ARCH_TOKENIZER, save_tokenizer

_ADDED = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False}


def _step_json(sign: str) -> dict[str, Any]:
    if sign.startswith("split:"):
        return {"type": "Split", "pattern": {"Regex": sign[6:]}, "behavior": "Isolated", "invert": False}
    if sign.startswith("bytelevel"):
        return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": sign == "bytelevel+regex"}
    if sign == "digits":
        return {"type": "Digits", "individual_digits": True}
    raise ValueError(sign)


def _pre_tokenizer(f: GGUFFile) -> tuple[dict[str, Any], bool]:
    pre = str(f.get("tokenizer.ggml.pre") or "gpt-2")
    pre = {"llama3": "llama-bpe"}.get(pre, pre)
    if pre not in PRE_TOKENIZERS:
        raise ConfigError(
            f"{f.path.name} uses llama.cpp's {pre!r} pre-tokenizer, which slmops cannot rebuild as a Hugging Face tokenizer",
            why=f"GGUF → HF rebuilds the pre-tokenizers {', '.join(PRE_TOKENIZERS)}",
            fix=f"import it as GGUF instead (slmops models import {f.path.name} without --to hf); llama.cpp tokenizes it itself",
        )
    steps, ignore = PRE_TOKENIZERS[pre]
    parts = [_step_json(s) for s in steps]
    return (parts[0] if len(parts) == 1 else {"type": "Sequence", "pretokenizers": parts}), bool(ignore)


def _post_processor(bos: tuple[str, int] | None, eos: tuple[str, int] | None) -> dict[str, Any] | None:
    """TemplateProcessing adding BOS and/or EOS (token texts are given as ids, so any text is safe)."""
    if bos is None and eos is None:
        return None
    first = [bos] if bos else []
    last = [eos] if eos else []

    def seq(name: str, type_id: int) -> list[dict[str, Any]]:
        return [{"SpecialToken": {"id": t, "type_id": type_id}} for t, _ in first] + [{"Sequence": {"id": name, "type_id": type_id}}] \
            + [{"SpecialToken": {"id": t, "type_id": type_id}} for t, _ in last]

    specials = {t: {"id": t, "ids": [i], "tokens": [t]} for t, i in first + last}
    return {"type": "TemplateProcessing", "single": seq("A", 0), "pair": seq("A", 0) + seq("B", 1), "special_tokens": specials}


def _spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[list[str]]:
    """BPE merges of a SentencePiece BPE vocabulary: every split of a piece into two pieces, best-scored first."""
    vocab = {t: i for i, t in enumerate(tokens) if types[i] not in (CONTROL, UNUSED, BYTE)}
    found = []
    for piece, pid in vocab.items():
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                found.append((scores[pid], vocab[left], vocab[right], left, right))
    found.sort(key=lambda m: (-m[0], m[1], m[2]))
    return [[left, right] for _, _, _, left, right in found]


def tokenizer_json(f: GGUFFile) -> dict[str, Any]:
    """The ``tokenizer.json`` of ``f``'s vocabulary."""
    model = f.get("tokenizer.ggml.model")
    tokens = f.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        raise DataError(f"{f.path.name} has no vocabulary (tokenizer.ggml.tokens)", fix="use a GGUF that embeds its tokenizer (any llama.cpp model file does)")
    n = len(tokens)
    types = f.get("tokenizer.ggml.token_type") or [1] * n
    if len(types) != n:
        raise DataError(f"{f.path.name}: tokenizer.ggml.token_type has {len(types)} entries for {n} tokens", fix="download or copy the file again")
    added = [{"id": i, "content": t, **_ADDED, "special": types[i] == CONTROL} for i, t in enumerate(tokens) if types[i] in (CONTROL, USER_DEFINED)]
    bos, eos = f.get("tokenizer.ggml.bos_token_id"), f.get("tokenizer.ggml.eos_token_id")
    add_bos = bool(f.get("tokenizer.ggml.add_bos_token", model == "llama")) and bos is not None
    add_eos = bool(f.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
    post = _post_processor((tokens[bos], bos) if add_bos else None, (tokens[eos], eos) if add_eos else None)
    vocab = {t: i for i, t in enumerate(tokens) if types[i] != UNUSED}
    if model == "gpt2":
        pre, ignore_merges = _pre_tokenizer(f)
        merges = [m.split(" ", 1) for m in f.get("tokenizer.ggml.merges") or []]
        if any(len(m) != 2 for m in merges):
            raise DataError(f"{f.path.name}: tokenizer.ggml.merges holds an entry that is not 'left right'", fix="download or copy the file again")
        qwen = f.get("tokenizer.ggml.pre") == "qwen2"
        return {
            "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": {"type": "NFC"} if qwen else None,
            "pre_tokenizer": pre,
            "post_processor": post or {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": False, "byte_fallback": False, "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges},
        }
    if model == "llama":
        scores = f.get("tokenizer.ggml.scores") or [0.0] * n
        unk = f.get("tokenizer.ggml.unknown_token_id")
        space = bool(f.get("tokenizer.ggml.add_space_prefix", True))
        return {
            "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": None,
            "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first" if space else "never", "split": False},
            "post_processor": post,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
                *([{"type": "Strip", "content": " ", "start": 1, "stop": 0}] if space else [])]},
            "model": {"type": "BPE", "dropout": None, "unk_token": tokens[unk] if unk is not None else None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False, "vocab": vocab,
                      "merges": _spm_merges(tokens, scores, types)},
        }
    raise ConfigError(
        f"{f.path.name} has a {model!r} tokenizer, which slmops cannot rebuild as a Hugging Face tokenizer",
        why="GGUF → HF rebuilds byte-level BPE ('gpt2') and SentencePiece BPE ('llama') vocabularies",
        fix=f"import it as GGUF instead (slmops models import {f.path.name} without --to hf)",
    )


def stop_ids(f: GGUFFile) -> list[int]:
    """Token ids generation stops on: EOS, EOT, EOM and slmops' recorded stop list."""
    ids: list[int] = []
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        v = f.get(key)
        if isinstance(v, int) and v not in ids:
            ids.append(v)
    for v in f.get(STOP_IDS_KEY) or []:
        if isinstance(v, int) and v not in ids:
            ids.append(v)
    return ids


def write_tokenizer(f: GGUFFile, out: Path, *, context_length: int) -> dict[str, Any]:
    """Write ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json`` and
    ``generation_config.json`` for ``f`` into ``out``; return facts for the manifest."""
    tk = require("tokenizers", extra="train", purpose="building a tokenizer")
    tf = require("transformers", extra="train", purpose="writing tokenizer files")
    tj = tokenizer_json(f)
    try:
        tok = tk.Tokenizer.from_str(json.dumps(tj))
    except Exception as exc:  # tokenizers raises its own Exception subclass
        raise DataError(f"the vocabulary of {f.path.name} does not form a valid tokenizer", why=str(exc)[:300], fix="download or copy the file again") from exc
    tokens = f.get("tokenizer.ggml.tokens")

    def text(key: str) -> str | None:
        i = f.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None

    template = f.get("tokenizer.chat_template")
    bos_id, eos_id = f.get("tokenizer.ggml.bos_token_id"), f.get("tokenizer.ggml.eos_token_id")
    add_bos = tj["post_processor"] is not None and tj["post_processor"].get("type") == "TemplateProcessing" and bos_id is not None \
        and any("SpecialToken" in p and p["SpecialToken"]["id"] == tokens[bos_id] for p in tj["post_processor"]["single"][:1])
    hf = tf.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=text("bos"), eos_token=text("eos"), unk_token=text("unknown"), pad_token=text("padding"),
        add_bos_token=add_bos, add_eos_token=bool(f.get("tokenizer.ggml.add_eos_token", False)) and eos_id is not None,
        model_max_length=context_length, clean_up_tokenization_spaces=False,
        chat_template=template if isinstance(template, str) and template.strip() else None,
    )
    model = f.get("tokenizer.ggml.model")
    cls = "LlamaTokenizerFast" if model == "llama" else ARCH_TOKENIZER.get(f.arch, ARCH_TOKENIZER["llama"]).tokenizer_class
    files = save_tokenizer(hf, out, tokenizer_class=cls)
    stops = stop_ids(f)
    gen = {"bos_token_id": bos_id, "eos_token_id": stops[0] if len(stops) == 1 else (stops or None), "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps({k: v for k, v in gen.items() if v is not None}, indent=2, sort_keys=True) + "\n")
    return {"tokenizer_model": model, "pre_tokenizer": f.get("tokenizer.ggml.pre"), "tokenizer_size": len(hf), "add_bos": add_bos,
            "chat_template": bool(hf.chat_template), "stop_token_ids": stops, "tokenizer_files": [*files, "generation_config.json"]}
