"""Ollama Modelfiles for GGUF artifacts: ``FROM``, ``ADAPTER``, ``TEMPLATE`` (from the chat template), stops.

Ollama's ``TEMPLATE`` is a Go template, not Jinja, so the model's Jinja chat template cannot be
copied. Instead it is *probed*: rendered in slmops' sandbox on small conversations whose contents
are sentinels, which reveals the text each role is wrapped in (``<|user|>\\n`` … ``<|end|>\\n``),
the generation prompt and any leading text (the BOS, which llama.cpp adds itself). Those pieces
are assembled into a Go template over ``.Messages`` of the same shape as Ollama's own templates.
A template that cannot be probed (it rejects the probe conversations, or renders roles
inconsistently) gives a Modelfile without ``TEMPLATE`` — Ollama then falls back to the template
it detects from the GGUF — and a warning in the stage's facts.

Stop strings are the texts of the tokens generation ends on (the tokenizer's EOS and
``generation_config.json``'s extra EOS ids).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmops._optional import require
from slmops.errors import SlmopsError

log = logging.getLogger(__name__)

_S, _U, _A, _U2 = "\x01SYSTEM\x01", "\x01USER\x01", "\x01ASSISTANT\x01", "\x01USER2\x01"


@dataclass(frozen=True)
class RoleTemplate:
    """The text around each role's content, learned by rendering the chat template."""

    head: str
    user: tuple[str, str]
    assistant: tuple[str, str]
    generation: str
    system: tuple[str, str] | None


def _render(template: str, messages: list[dict[str, str]], gen: bool, specials: dict[str, str]) -> str:
    from slmops.data.templates import render_chat

    return render_chat(template, messages, add_generation_prompt=gen, **specials)


def probe_template(template: str, *, bos_token: str = "", eos_token: str = "") -> RoleTemplate | None:
    """Learn the role wrappers of a Jinja chat template; None when it cannot be probed reliably."""
    sp = {"bos_token": bos_token, "eos_token": eos_token}
    try:
        r_u = _render(template, [{"role": "user", "content": _U}], False, sp)
        r_u_gen = _render(template, [{"role": "user", "content": _U}], True, sp)
        r_uau = _render(template, [{"role": "user", "content": _U}, {"role": "assistant", "content": _A}, {"role": "user", "content": _U2}], False, sp)
    except SlmopsError as exc:
        log.info("chat template cannot be probed: %s", exc)
        return None
    if not r_u_gen.startswith(r_u) or _U not in r_u or not r_uau.startswith(r_u) or _A not in r_uau or _U2 not in r_uau:
        return None
    i_u = r_u.index(_U)
    user_suf = r_u[i_u + len(_U):]
    rest = r_uau[len(r_u):]
    i_a = rest.index(_A)
    asst_pre = rest[:i_a]
    after_a = rest[i_a + len(_A):]
    i_u2 = after_a.index(_U2)
    if after_a[i_u2 + len(_U2):] != user_suf:
        return None
    tail = after_a[:i_u2]  # the assistant's suffix, then the user prefix (without the head)
    user_pre = asst_suf = head = None
    for k in range(len(tail) + 1):  # the longest user prefix that also ends the first turn's opening
        if r_u[:i_u].endswith(tail[k:]):
            user_pre, asst_suf, head = tail[k:], tail[:k], r_u[: i_u - len(tail) + k]
            break
    if user_pre is None or asst_suf is None or head is None:
        return None
    generation = r_u_gen[len(r_u):]
    system: tuple[str, str] | None = None
    try:
        r_su = _render(template, [{"role": "system", "content": _S}, {"role": "user", "content": _U}], False, sp)
        if r_su.startswith(head) and _S in r_su and r_su.endswith(user_pre + _U + user_suf):
            i_s = r_su.index(_S)
            system = (r_su[len(head):i_s], r_su[i_s + len(_S): len(r_su) - len(user_pre + _U + user_suf)])
    except SlmopsError:
        system = None
    return RoleTemplate(head=head, user=(user_pre, user_suf), assistant=(asst_pre, asst_suf), generation=generation, system=system)


def _lit(text: str) -> str:
    """Go-template literal text (``{{`` must not appear unescaped)."""
    return text.replace("{{", '{{ "{{" }}')


def go_template(rt: RoleTemplate, *, bos_token: str = "", add_bos: bool = True) -> str:
    """An Ollama TEMPLATE equivalent to the probed chat template (BOS left to llama.cpp when it adds one)."""
    head = rt.head[len(bos_token):] if add_bos and bos_token and rt.head.startswith(bos_token) else rt.head
    parts = [_lit(head), "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"]
    if rt.system is not None:
        parts.append(f'{{{{ if eq .Role "system" }}}}{_lit(rt.system[0])}{{{{ .Content }}}}{_lit(rt.system[1])}{{{{ else if eq .Role "user" }}}}')
    else:
        parts.append('{{ if or (eq .Role "user") (eq .Role "system") }}')
    parts.append(f"{_lit(rt.user[0])}{{{{ .Content }}}}{_lit(rt.user[1])}{{{{ if $last }}}}{_lit(rt.generation)}{{{{ end }}}}")
    parts.append(f'{{{{ else if eq .Role "assistant" }}}}{_lit(rt.assistant[0])}{{{{ .Content }}}}{{{{ if not $last }}}}{_lit(rt.assistant[1])}{{{{ end }}}}')
    parts.append("{{ end }}{{ end }}")
    return "".join(parts)


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def modelfile(
    *,
    model_file: str,
    adapters: list[str],
    template: str | None,
    stops: list[str],
    system: str | None = None,
    parameters: dict[str, Any] | None = None,
) -> str:
    """The text of a Modelfile (paths relative to the Modelfile's folder)."""
    lines = [f"FROM ./{model_file}"]
    lines += [f"ADAPTER ./{a}" for a in adapters]
    if template is not None:
        lines.append('TEMPLATE """' + template.replace('"""', '\\"\\"\\"') + '"""')
    if system:
        lines.append('SYSTEM """' + system.replace('"""', '\\"\\"\\"') + '"""')
    for s in dict.fromkeys(stops):
        lines.append(f"PARAMETER stop {_quote(s)}")
    for k, v in (parameters or {}).items():
        lines.append(f"PARAMETER {k} {v}")
    return "\n".join(lines) + "\n"


def gguf_tokenizer_facts(path: Path) -> dict[str, Any]:
    """Chat template, BOS/EOS texts, add_bos and stop-token texts of a GGUF (read with ``gguf.GGUFReader``)."""
    gguf = require("gguf", extra="gguf", purpose="reading GGUF files")
    reader = gguf.GGUFReader(str(path), "r")

    def scalar(key: str) -> Any:
        f = reader.fields.get(key)
        return f.contents() if f is not None else None

    tokens = reader.fields.get("tokenizer.ggml.tokens")
    text_of = (lambda i: bytes(tokens.parts[tokens.data[i]]).decode("utf-8", errors="replace")) if tokens is not None else (lambda i: "")
    n = len(tokens.data) if tokens is not None else 0
    stop_ids = list(scalar("slmops.stop_token_ids") or [])
    eos = scalar("tokenizer.ggml.eos_token_id")
    if eos is not None and eos not in stop_ids:
        stop_ids.insert(0, int(eos))
    bos = scalar("tokenizer.ggml.bos_token_id")
    return {
        "chat_template": scalar("tokenizer.chat_template"),
        "bos_token": text_of(int(bos)) if bos is not None and 0 <= bos < n else "",
        "eos_token": text_of(int(eos)) if eos is not None and 0 <= eos < n else "",
        "add_bos": bool(scalar("tokenizer.ggml.add_bos_token")),
        "stops": [text_of(int(i)) for i in stop_ids if 0 <= int(i) < n],
    }
