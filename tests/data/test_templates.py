"""Chat/text template rendering and loss masks, on byte-level BPE tokenizers trained in code.

The masks are checked against what they must mean (the decoded labelled tokens are exactly the
assistant contents plus their end marker) and against transformers' own
``return_assistant_tokens_mask`` for a template with ``{% generation %}`` blocks.
"""

from __future__ import annotations

from typing import Any

import pytest

from slmops.data.examples import build_example, build_examples
from slmops.data.templates import (
    EXAMPLE_TEXT_TEMPLATE,
    IGNORE_INDEX,
    chat_template_of,
    render_chat,
    render_text_template,
    special_token_kwargs,
    text_template_fields,
)
from slmops.errors import ConfigError, DataError

SPECIALS = ["<|endoftext|>", "<s>", "<|im_start|>", "<|im_end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Phi-3 style with a BOS and {% generation %} blocks (so transformers can compute its own mask).
PHI_GEN = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|assistant|>\n' }}{%- generation %}{{- message['content'] + '<|end|>' }}{%- endgeneration %}{{- '\n' }}"
    "{%- else %}{{- '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\n' }}{%- endif %}"
)
# No special end-of-turn marker at all: the eos must be appended after the last answer.
PLAIN = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"

STYLES: dict[str, tuple[str, str, str | None]] = {
    # name: (template, eos token, bos token)
    "chatml": (CHATML, "<|im_end|>", None),
    "phi": (PHI_GEN, "<|end|>", "<s>"),
    "plain": (PLAIN, "<|endoftext|>", None),
}

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello in French."},
    {"role": "assistant", "content": "Bonjour, café? 🙂"},
    {"role": "user", "content": "And in Chinese?"},
    {"role": "assistant", "content": "你好 the quick fox"},
]


def _corpus() -> list[str]:
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "hello", "world", "small", "model", "answer", "teacher"]
    extra = ["Bonjour café", "你好 中文", "🙂 emoji", "naïve Ünïcödé"]
    return [
        " ".join(words[(i * 5 + j) % len(words)] for j in range(4 + i % 6)) + (f" {extra[i % 4]}" if i % 3 == 0 else "") for i in range(300)
    ]


def make_tokenizer(style: str) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    template, eos, bos = STYLES[style]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420, min_frequency=1, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token="<|endoftext|>",
        extra_special_tokens=[t for t in SPECIALS if t not in (eos, bos, "<|endoftext|>")],
        clean_up_tokenization_spaces=False,
        chat_template=template,
    )


@pytest.fixture(scope="module")
def toks() -> dict[str, Any]:
    return {s: make_tokenizer(s) for s in STYLES}


def labelled_runs(ex: Any) -> list[list[int]]:
    runs: list[list[int]] = []
    cur: list[int] = []
    for tid, lab in zip(ex.input_ids, ex.labels, strict=True):
        if lab != IGNORE_INDEX:
            assert lab == tid
            cur.append(tid)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("style", list(STYLES))
@pytest.mark.parametrize("gen", [True, False])
def test_render_chat_matches_transformers(toks: dict[str, Any], style: str, gen: bool) -> None:
    tok = toks[style]
    ours = render_chat(chat_template_of(tok), CHAT[:4], add_generation_prompt=gen, **special_token_kwargs(tok))
    theirs = tok.apply_chat_template(CHAT[:4], tokenize=False, add_generation_prompt=gen)
    assert ours == theirs


def test_render_chat_helpers_and_objects() -> None:
    tpl = "{{ strftime_now('%Y') | length }}|{{ messages | tojson }}|{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}"
    out = render_chat(tpl, [{"role": "user", "content": "é<b>"}])
    assert out == '4|[{"role": "user", "content": "é<b>"}]|1'

    class Msg:  # objects with role/content attributes reach the template as plain dicts
        def __init__(self) -> None:
            self.role, self.content = "user", "hi"

    from slmops.data.templates import _message

    assert render_chat("{{ messages[0]['content'] }}", [_message(Msg())]) == "hi"


@pytest.mark.parametrize(
    "evil",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{% set ns = namespace() %}{% set ns.__dict__ = 1 %}",
        "{{ messages.append(1) }}",
    ],
)
def test_sandbox_blocks_exploits(evil: str) -> None:
    from jinja2.exceptions import SecurityError

    with pytest.raises(ConfigError) as exc:
        render_chat(evil, [{"role": "user", "content": "x"}])
    assert isinstance(exc.value.__cause__, SecurityError) or "unsafe" in exc.value.message or "failed" in exc.value.message


def test_sandbox_security_error_is_config_error() -> None:
    from jinja2.exceptions import SecurityError

    with pytest.raises(ConfigError, match="unsafe") as exc:
        render_chat("{{ ''.__class__.__mro__[1].__subclasses__() }}", [])
    assert isinstance(exc.value.__cause__, SecurityError)


def test_template_raise_exception_is_data_error() -> None:
    tpl = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be user') }}{% endif %}ok"
    assert render_chat(tpl, [{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(DataError, match="first message must be user"):
        render_chat(tpl, [{"role": "assistant", "content": "x"}])


def test_template_syntax_error_is_config_error() -> None:
    with pytest.raises(ConfigError, match="does not parse"):
        render_chat("{% for m in messages %}", [])


def test_no_chat_template_says_to_use_text_template(toks: dict[str, Any]) -> None:
    tok = make_tokenizer("chatml")
    tok.chat_template = None
    with pytest.raises(ConfigError) as exc:
        chat_template_of(tok)
    assert "text template" in exc.value.message and "{input}" in exc.value.message
    with pytest.raises(ConfigError, match="no chat template"):
        build_example(tok, CHAT, max_length=64)


# --------------------------------------------------------------------------- text templates


def test_text_template_rendering_and_braces() -> None:
    assert render_text_template(EXAMPLE_TEXT_TEMPLATE, {"input": "2+2?", "output": "4"}) == "### Question: 2+2?\n### Answer: 4"
    assert render_text_template('{{"q": "{input}"}}', {"input": "x"}) == '{"q": "x"}'
    assert text_template_fields("{system} {input} {output} {input}") == ["system", "input", "output"]


def test_text_template_missing_field_names_field_and_record() -> None:
    with pytest.raises(DataError) as exc:
        render_text_template(EXAMPLE_TEXT_TEMPLATE, {"input": "x"}, record="rec-17")
    assert "'output'" in exc.value.message and "rec-17" in exc.value.message
    with pytest.raises(DataError, match="rec-9"):
        build_examples(
            make_tokenizer("chatml"), [{"id": "rec-9", "question": "x", "output": "y"}], template=EXAMPLE_TEXT_TEMPLATE, max_length=64
        )


@pytest.mark.parametrize("bad", ["{0}", "{}", "{a.b}", "{a[0]}", "{oops"])
def test_text_template_bad_fields(bad: str) -> None:
    with pytest.raises(ConfigError):
        render_text_template(bad, {"a": 1, "0": 2})


@pytest.mark.parametrize("style", ["chatml", "phi"])
def test_text_template_masks_only_the_output(toks: dict[str, Any], style: str) -> None:
    tok = toks[style]
    ex = build_example(tok, {"input": "What is the quick fox?", "output": "a brown fox 🙂"}, template=EXAMPLE_TEXT_TEMPLATE, max_length=128)
    runs = labelled_runs(ex)
    assert len(runs) == 1
    assert ex.input_ids[-1] == tok.eos_token_id and ex.labels[-1] == tok.eos_token_id
    assert tok.decode(runs[0]).strip() == "a brown fox 🙂" + tok.eos_token
    # the prompt part is not labelled, and everything else round-trips
    prompt_len = ex.labels.index(runs[0][0])
    assert "Question" in tok.decode(ex.input_ids[:prompt_len]) and "Answer:" in tok.decode(ex.input_ids[:prompt_len])
    if style == "phi":
        assert ex.input_ids[0] == tok.bos_token_id and ex.labels[0] == IGNORE_INDEX


def test_text_template_on_a_chat_record(toks: dict[str, Any]) -> None:
    tok = toks["chatml"]
    ex = build_example(tok, {"messages": CHAT[:3]}, template="{system}\nQ: {input}\nA: {output}", max_length=128)
    assert tok.decode(ex.input_ids).startswith("You are terse.\nQ: Say hello in French.\nA: Bonjour")
    assert tok.decode(labelled_runs(ex)[0]).strip() == "Bonjour, café? 🙂<|im_end|>"
    with pytest.raises(DataError, match="multi-turn"):
        build_example(tok, CHAT, template=EXAMPLE_TEXT_TEMPLATE, max_length=128)
    with pytest.raises(ConfigError, match=r"\{output\}"):
        build_example(tok, {"input": "x"}, template="{input}", max_length=128)


# --------------------------------------------------------------------------- chat masks


@pytest.mark.parametrize("style", list(STYLES))
def test_chat_mask_covers_exactly_the_assistant_turns(toks: dict[str, Any], style: str) -> None:
    tok = toks[style]
    ex = build_example(tok, CHAT, max_length=512)
    assert not ex.truncated and ex.attention_mask == [1] * len(ex.input_ids)
    runs = [tok.decode(r) for r in labelled_runs(ex)]
    answers = [m["content"] for m in CHAT if m["role"] == "assistant"]
    if style == "plain":  # no special end marker: the template's "\n" is learned, and the last answer gets the eos
        # (" Bonjour" is one token: the template's space merged with the answer, so it is labelled too)
        assert runs == [" " + answers[0] + "\n", " " + answers[1] + "\n" + tok.eos_token]
        assert ex.input_ids[-1] == tok.eos_token_id
    else:
        assert runs == [a + tok.eos_token for a in answers]
    # the tokens are the template's, exactly as transformers tokenizes the rendered chat
    expected = tok.apply_chat_template(CHAT, tokenize=True, return_dict=True)["input_ids"]
    if style == "plain":
        expected = [*expected, tok.eos_token_id]
    assert ex.input_ids == expected


def test_chat_mask_agrees_with_transformers_generation_mask(toks: dict[str, Any]) -> None:
    tok = toks["phi"]
    ex = build_example(tok, CHAT, max_length=512)
    hf = tok.apply_chat_template(CHAT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert ex.input_ids == hf["input_ids"]
    assert [int(lab != IGNORE_INDEX) for lab in ex.labels] == hf["assistant_masks"]


def test_chat_mask_with_empty_and_list_content(toks: dict[str, Any]) -> None:
    tok = toks["chatml"]
    msgs = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "the dog"},
    ]
    runs = [tok.decode(r) for r in labelled_runs(build_example(tok, msgs, max_length=128))]
    assert runs == ["<|im_end|>", "the dog<|im_end|>"]


def test_record_without_assistant_turn_is_named(toks: dict[str, Any]) -> None:
    with pytest.raises(DataError) as exc:
        build_example(toks["chatml"], {"id": "r-42", "messages": CHAT[:2]}, max_length=64)
    assert "r-42" in exc.value.message and "no assistant turn" in exc.value.message
    with pytest.raises(DataError, match="#1"):
        build_examples(toks["chatml"], [CHAT, CHAT[:2]], max_length=64)


def test_truncation_is_flagged_and_counted(toks: dict[str, Any]) -> None:
    tok = toks["chatml"]
    full = build_example(tok, CHAT, max_length=512)
    cut = build_example(tok, CHAT, max_length=20)
    assert cut.truncated and len(cut.input_ids) == 20 and len(cut.labels) == 20
    assert cut.input_ids == full.input_ids[:20] and cut.labels == full.labels[:20]
    short = CHAT[:3]
    n = len(build_example(tok, short, max_length=512).input_ids)
    got = build_examples(tok, [short, CHAT, short], max_length=n)
    assert (got.total, got.truncated, got.dropped, len(got.examples)) == (3, 1, 0, 3)
    tiny = build_examples(tok, [CHAT], max_length=5)  # nothing of the answer survives: dropped
    assert (tiny.truncated, tiny.dropped, tiny.examples) == (1, 1, [])
    assert tiny.metrics()["dropped_no_labels"] == 1


def test_build_example_rejects_bad_max_length(toks: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="max_length"):
        build_example(toks["chatml"], CHAT, max_length=0)


def test_plain_text_record_is_learned_whole(toks: dict[str, Any]) -> None:
    tok = toks["phi"]
    for rec in ({"kind": "text", "messages": [], "text": "the quick fox 🙂"}, {"text": "the quick fox 🙂"}):
        ex = build_example(tok, rec, max_length=64)
        assert ex.input_ids[0] == tok.bos_token_id and ex.labels[0] == IGNORE_INDEX
        assert ex.labels[1:] == ex.input_ids[1:] and ex.input_ids[-1] == tok.eos_token_id


def test_record_objects_from_slmops_data(toks: dict[str, Any]) -> None:
    from slmops.data.records import Message, Record

    rec = Record(kind="chat", id="obj-1", messages=[Message(role="user", content="hi"), Message(role="assistant", content="the dog")])
    tok = toks["chatml"]
    ex = build_example(tok, rec, max_length=64)
    assert [tok.decode(r) for r in labelled_runs(ex)] == ["the dog<|im_end|>"]
    txt = Record(kind="text", text="hello world")
    assert build_example(tok, txt, max_length=64).num_labels == len(tok.encode("hello world", add_special_tokens=False)) + 1


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3"])
def test_masks_on_the_tiny_models_tokenizers(tmp_path_factory: pytest.TempPathFactory, arch: str) -> None:
    """The tokenizers ``models.init`` makes (with {% generation %} templates): same ids and mask as transformers."""
    from slmops.models.loading import load_tokenizer
    from slmops.store.registry import Store
    from slmops.testing.tiny import tiny_model

    with Store(tmp_path_factory.mktemp(f"tpl_{arch}")) as store:
        tok = load_tokenizer(tiny_model(arch, store=store))
    ex = build_example(tok, CHAT, max_length=512)
    hf = tok.apply_chat_template(CHAT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert ex.input_ids == hf["input_ids"]
    assert [int(lab != IGNORE_INDEX) for lab in ex.labels] == hf["assistant_masks"]
    assert [tok.decode(r) for r in labelled_runs(ex)] == [m["content"] + tok.eos_token for m in CHAT if m["role"] == "assistant"]
