"""Byte-level BPE tokenizers trained in code, with special tokens, a chat template and HF files.

Scheme
------
Every tokenizer has the base special tokens ``<unk>`` (id 0), ``<s>`` (1, BOS), ``</s>`` (2, end of
document) and ``<pad>`` (3), then the chat markers of its chat style, then the 256 byte symbols and
the learned merges. Two chat styles (``qwen2`` models default to ``chatml``, the others to ``phi``):

* ``phi`` (Phi-3 style; llama.cpp recognises it as ``phi3``)::

      <s><|system|>\\nYou are terse.<|end|>\\n<|user|>\\nHi<|end|>\\n<|assistant|>\\nHello<|end|>\\n

* ``chatml`` (Qwen style; llama.cpp recognises it as ``chatml``)::

      <|im_start|>system\\nYou are terse.<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello<|im_end|>\\n

The end-of-turn marker (``<|end|>`` / ``<|im_end|>``) is the tokenizer's ``eos_token``, so SFT that
appends ``eos_token`` and generation that stops on it agree; ``</s>`` stays a second stop token in
``generation_config.json``. The template starts with ``{{ bos_token }}`` when the tokenizer adds a
BOS (Llama/Phi-3 style), so ``apply_chat_template(tokenize=True)`` yields exactly one BOS; text
rendered with ``tokenize=False`` must then be encoded with ``add_special_tokens=False``.

Assistant turns are wrapped in ``{% generation %}…{% endgeneration %}`` (content plus the end
marker), which makes ``apply_chat_template(..., return_assistant_tokens_mask=True)`` work. That tag
is a transformers extension (``slmops.data.templates.render_chat`` accepts it too); plain Jinja
renderers (llama-cpp-python, a bare ``jinja2`` sandbox) reject it, so code that hands the template
to another engine, or writes it into a GGUF/ONNX package, should pass it through
:func:`strip_generation_tags` first (``generation_tags=False`` in ``models.init`` leaves it out).

Pre-tokenization follows the architecture, because transformers 5 rebuilds some tokenizers from
their own class instead of trusting ``tokenizer.json``: ``Qwen2Tokenizer`` always installs an NFC
normalizer and the Qwen regex split, so a ``qwen2`` tokenizer is trained with exactly that pipeline
(and no BOS). ``llama``/``phi3`` use the Llama-3 regex split and load as ``TokenizersBackend``
unchanged. ``tokenizer_config.json`` names the class the family's real models use (see
:data:`ARCH_TOKENIZER`). Either way the saved ``tokenizer.json`` is what every runtime (torch, ORT GenAI,
llama.cpp) sees.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, NamedTuple

from slmops._optional import require
from slmops.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ChatStyle = Literal["phi", "chatml"]
PreTokenizer = Literal["llama3", "qwen2"]

UNK, BOS, EOD, PAD = "<unk>", "<s>", "</s>", "<pad>"
BASE_SPECIAL_TOKENS = (UNK, BOS, EOD, PAD)
CHAT_MARKERS: dict[str, tuple[str, ...]] = {
    "phi": ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
    "chatml": ("<|im_start|>", "<|im_end|>"),
}
TURN_END: dict[str, str] = {"phi": "<|end|>", "chatml": "<|im_end|>"}
ROLES = ("system", "user", "assistant")
MIN_VOCAB = len(BASE_SPECIAL_TOKENS) + 2 + 256 + 16

# Same regexes the reference tokenizers use (Llama 3: digits in groups of 1-3; Qwen2: single digits).
LLAMA3_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

#: llama.cpp's name for each pre-tokenizer (``tokenizer.ggml.pre``). Its converter recognises a BPE
#: vocabulary by hashing sample encodings, which a freshly trained vocabulary never matches, so a
#: GGUF exporter has to pass this name itself.
GGUF_PRE: dict[str, str] = {"llama3": "llama-bpe", "qwen2": "qwen2"}


class TokenizerSpec(NamedTuple):
    """How an architecture's tokenizer is built and declared."""

    pretokenizer: PreTokenizer
    add_bos: bool
    chat_style: ChatStyle  # the default; ``models.init`` can override it
    tokenizer_class: str  # written to tokenizer_config.json, as the real models of the family do


#: llama like Llama 3 (PreTrainedTokenizerFast); qwen2 like Qwen2.5; phi3 like Phi-4 (a BPE Phi-3
#: model: llama.cpp's converter takes the BPE path for Phi3ForCausalLM only with GPT2Tokenizer).
ARCH_TOKENIZER: dict[str, TokenizerSpec] = {
    "llama": TokenizerSpec("llama3", True, "phi", "PreTrainedTokenizerFast"),
    "phi3": TokenizerSpec("llama3", True, "phi", "GPT2Tokenizer"),
    "qwen2": TokenizerSpec("qwen2", False, "chatml", "Qwen2Tokenizer"),
}

_GEN_TAG = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")


# -- chat template ---------------------------------------------------------------------------------
def chat_template(style: ChatStyle = "phi", *, bos: bool = True, generation_tags: bool = True) -> str:
    """The Jinja chat template of ``style`` (system/user/assistant, ``add_generation_prompt``)."""
    if style not in CHAT_MARKERS:
        raise ConfigError(f"unknown chat template style {style!r}", fix="use phi or chatml")
    if style == "phi":
        def opener(role: str) -> str:
            return "'<|' + message['role'] + '|>\\n'" if role == "any" else f"'<|{role}|>\\n'"
    else:
        def opener(role: str) -> str:
            return "'<|im_start|>' + message['role'] + '\\n'" if role == "any" else f"'<|im_start|>{role}\\n'"
    end = TURN_END[style]
    gen_open, gen_close = ("{%- generation %}", "{%- endgeneration %}") if generation_tags else ("", "")
    return "".join(
        [
            "{{- bos_token }}" if bos else "",
            "{%- for message in messages %}",
            "{%- if message['role'] not in ['system', 'user', 'assistant'] %}",
            "{{- raise_exception('unknown role ' + message['role'] + ': this template takes system, user and assistant') }}",
            "{%- endif %}",
            "{%- if message['content'] is string %}{%- set content = message['content'] %}",
            "{%- elif message['content'] is none %}{%- set content = '' %}",
            "{%- else %}{%- set ns = namespace(text='') %}",
            "{%- for part in message['content'] %}{%- if part['type'] == 'text' %}{%- set ns.text = ns.text + part['text'] %}{%- endif %}{%- endfor %}",
            "{%- set content = ns.text %}{%- endif %}",
            "{%- if message['role'] == 'assistant' %}",
            f"{{{{- {opener('assistant')} }}}}",
            gen_open,
            f"{{{{- content + '{end}' }}}}",
            gen_close,
            "{{- '\\n' }}",
            "{%- else %}",
            f"{{{{- {opener('any')} + content + '{end}\\n' }}}}",
            "{%- endif %}",
            "{%- endfor %}",
            "{%- if add_generation_prompt %}",
            f"{{{{- {opener('assistant')} }}}}",
            "{%- endif %}",
        ]
    )


def strip_generation_tags(template: str) -> str:
    """``template`` without ``{% generation %}``/``{% endgeneration %}`` (for non-transformers Jinja)."""
    return _GEN_TAG.sub("", template)


# -- training --------------------------------------------------------------------------------------
def special_tokens(style: ChatStyle) -> list[str]:
    return [*BASE_SPECIAL_TOKENS, *CHAT_MARKERS[style]]


def _pipeline(pretokenizer: PreTokenizer) -> dict[str, Any]:
    tk = require("tokenizers", extra="train", purpose="training a tokenizer")
    split = tk.pre_tokenizers.Split(tk.Regex(QWEN2_SPLIT if pretokenizer == "qwen2" else LLAMA3_SPLIT), behavior="isolated", invert=False)
    return {
        "normalizer": tk.normalizers.NFC() if pretokenizer == "qwen2" else None,
        "pre_tokenizer": tk.pre_tokenizers.Sequence([split, tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
        "decoder": tk.decoders.ByteLevel(),
    }


def train_tokenizer(
    texts: Iterable[str],
    *,
    vocab_size: int = 2000,
    chat_style: ChatStyle = "phi",
    add_bos: bool = True,
    pretokenizer: PreTokenizer = "llama3",
    generation_tags: bool = True,
    model_max_length: int = 512,
    min_frequency: int = 2,
) -> Any:
    """Train a byte-level BPE on ``texts``; return a transformers fast tokenizer ready to save.

    ``vocab_size`` is an upper bound: a small corpus may support fewer merges (the real size is
    ``len(tokenizer)``; the model's embedding takes exactly that).
    """
    if vocab_size < MIN_VOCAB:
        raise ConfigError(f"vocab_size {vocab_size} is too small", why=f"256 byte symbols and {len(special_tokens(chat_style))} special tokens need room", fix=f"use at least {MIN_VOCAB}")
    tk = require("tokenizers", extra="train", purpose="training a tokenizer")
    tf = require("transformers", extra="train", purpose="wrapping a tokenizer")
    specials = special_tokens(chat_style)
    tok = tk.Tokenizer(tk.models.BPE(unk_token=None, byte_fallback=False, fuse_unk=False))
    parts = _pipeline(pretokenizer)
    if parts["normalizer"] is not None:
        tok.normalizer = parts["normalizer"]
    tok.pre_tokenizer = parts["pre_tokenizer"]
    tok.decoder = parts["decoder"]
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_non_empty(texts), trainer=trainer)
    for i, t in enumerate(specials):
        if tok.token_to_id(t) != i:  # the ids the scheme promises
            raise RuntimeError(f"special token {t} got id {tok.token_to_id(t)}, expected {i}")
    bos_id = tok.token_to_id(BOS)
    if add_bos:
        tok.post_processor = tk.processors.TemplateProcessing(single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, bos_id)])
    else:
        tok.post_processor = tk.processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1", special_tokens=[])
    if tok.get_vocab_size() < vocab_size:
        log.info("tokenizer: corpus supports %d of the %d tokens asked for", tok.get_vocab_size(), vocab_size)
    hf = tf.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=TURN_END[chat_style],
        unk_token=UNK,
        pad_token=PAD,
        extra_special_tokens=[t for t in specials if t not in (UNK, BOS, PAD, TURN_END[chat_style])],
        add_bos_token=add_bos,
        add_eos_token=False,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
        chat_template=chat_template(chat_style, bos=add_bos, generation_tags=generation_tags),
    )
    return hf


def _non_empty(texts: Iterable[str]) -> Iterator[str]:
    n = 0
    for t in texts:
        if isinstance(t, str) and t:
            n += 1
            yield t
    if n == 0:
        raise DataError(
            "no text to train the tokenizer on",
            why="no record had messages[].content, text, input, output or prompt strings",
            fix="give a dataset with text, or leave the data input out to use the built-in corpus",
        )


# -- saving and facts ------------------------------------------------------------------------------
def save_tokenizer(tokenizer: Any, folder: Path, *, tokenizer_class: str = "PreTrainedTokenizerFast") -> list[str]:
    """Save ``tokenizer`` as ``tokenizer.json``, ``tokenizer_config.json`` (with the chat template)
    and ``special_tokens_map.json``; return the file names written.

    ``tokenizer_class`` replaces the v5-only ``TokenizersBackend`` that transformers 5 writes, so
    transformers 4, ORT GenAI and llama.cpp's converter read the folder too (see
    :data:`ARCH_TOKENIZER`; transformers 5 loads all of them from ``tokenizer.json`` unchanged).
    ``add_bos_token`` is written explicitly so converters do not have to guess.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder), save_jinja_files=False)
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = tokenizer_class
    cfg["add_bos_token"] = bool(getattr(tokenizer, "add_bos_token", False))
    cfg["add_eos_token"] = bool(getattr(tokenizer, "add_eos_token", False))
    cfg["clean_up_tokenization_spaces"] = False
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    extra = [str(t) for t in getattr(tokenizer, "extra_special_tokens", None) or []]
    stm = {k: v for k in ("bos_token", "eos_token", "unk_token", "pad_token") if (v := cfg.get(k))}
    if extra:
        stm["additional_special_tokens"] = extra
    (folder / "special_tokens_map.json").write_text(json.dumps(stm, indent=2, sort_keys=True) + "\n")
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(("tokenizer", "special_tokens", "chat_template")))


def tokenizer_facts(tokenizer: Any) -> dict[str, Any]:
    """Facts about a loaded tokenizer for manifests: sizes, special tokens and their ids, BOS policy."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    style = next((s for s, end in TURN_END.items() if template and end in template), None)
    return {
        "tokenizer_class": type(tokenizer).__name__,
        "tokenizer_size": len(tokenizer),
        "bos_token": tokenizer.bos_token,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token": tokenizer.eos_token,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token": tokenizer.pad_token,
        "pad_token_id": tokenizer.pad_token_id,
        "unk_token": tokenizer.unk_token,
        "add_bos_token": bool(getattr(tokenizer, "add_bos_token", False)),
        "special_tokens": list(tokenizer.all_special_tokens),
        "chat_template": style,
        "chat_template_generation_tags": bool(template and _GEN_TAG.search(template)),
    }
