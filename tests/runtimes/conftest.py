"""Tiny real models for the runtime tests: a byte-level BPE trained in code and a 2-layer Llama.

Built once per session and saved as a Hugging Face folder (safetensors), so the runtime loads it the
way it loads any downloaded model. Weights are random (seeded): logits are flat, which is what the
sampling tests want.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_WORDS = (
    "the quick brown fox jumps over lazy dog small models run fast on one machine offline "
    "a teacher answers questions and the student learns to copy its style while staying cheap "
    "quantized weights keep quality close to the parent when the calibration data is good"
).split()
_EXTRA = ["héllo naïve café", "中文 字符 测试", "emoji 🙂 🚀 ok", "price: 42€ — 3½", "Ünïcödé ß ø å"]


def corpus(n: int = 400) -> list[str]:
    """A few hundred deterministic sentences, with multi-byte characters mixed in."""
    out = []
    for i in range(n):
        words = [_WORDS[(i * 7 + j * 3) % len(_WORDS)] for j in range(5 + i % 7)]
        if i % 5 == 0:
            words.append(_EXTRA[i % len(_EXTRA)])
        out.append(" ".join(words) + ("." if i % 2 else "?"))
    return out


def build_tokenizer(vocab_size: int = 400, chat_template: str = CHATML) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=["<|im_start|>"],
        clean_up_tokenization_spaces=False,
        chat_template=chat_template,
    )


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Any:
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Any) -> Path:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    eos = tiny_tokenizer.eos_token_id
    cfg = LlamaConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=None,
        eos_token_id=eos,
        pad_token_id=tiny_tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    # Larger output weights than the default init: logits spread out (sampling differs by seed) but stay non-peaked.
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 0.3)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=tiny_tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path, safe_serialization=True)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def torch_rt(tiny_model_dir: Path) -> Any:
    from slmops.runtimes.torch_rt import TorchRuntime

    rt = TorchRuntime.from_path(tiny_model_dir)
    yield rt
    rt.close()
