"""Ollama Modelfiles: TEMPLATE probed from the Jinja chat template, stops, ADAPTER lines, files next to the GGUF."""

from __future__ import annotations

import os
from typing import Any

from slmops.export.ollama import go_template, modelfile, probe_template
from slmops.models.tokenizer import chat_template
from slmops.stage.runner import run_stage

PHI_TEMPLATE = """{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}{{ if eq .Role "system" }}<|system|>
{{ .Content }}<|end|>
{{ else if eq .Role "user" }}<|user|>
{{ .Content }}<|end|>
{{ if $last }}<|assistant|>
{{ end }}{{ else if eq .Role "assistant" }}<|assistant|>
{{ .Content }}{{ if not $last }}<|end|>
{{ end }}{{ end }}{{ end }}"""


def test_probe_phi_and_chatml_templates() -> None:
    phi = probe_template(chat_template("phi", bos=True), bos_token="<s>")
    assert phi is not None
    assert phi.head == "<s>" and phi.user == ("<|user|>\n", "<|end|>\n") and phi.generation == "<|assistant|>\n"
    assert phi.assistant == ("<|assistant|>\n", "<|end|>\n") and phi.system == ("<|system|>\n", "<|end|>\n")
    assert go_template(phi, bos_token="<s>", add_bos=True) == PHI_TEMPLATE
    assert go_template(phi, bos_token="<s>", add_bos=False).startswith("<s>{{ range")  # BOS kept when llama.cpp does not add it
    chatml = probe_template(chat_template("chatml", bos=False))
    assert chatml is not None and chatml.head == ""
    assert chatml.user == ("<|im_start|>user\n", "<|im_end|>\n") and chatml.generation == "<|im_start|>assistant\n"


def test_unprobeable_template_and_escaping() -> None:
    assert probe_template("{{ raise_exception('no') }}") is None
    # the generation prompt does not extend the conversation: no Go template can say that
    assert probe_template("{% for m in messages %}{{ m['content'] }}{% endfor %}{% if not add_generation_prompt %}END{% endif %}") is None
    weird = probe_template("{% for m in messages %}[{{ m['role'] }}]{{ '{{' }}{{ m['content'] }}\n{% endfor %}")
    assert weird is not None
    assert '{{ "{{" }}' in go_template(weird)
    text = modelfile(model_file="model.gguf", adapters=["adapter.gguf"], template=None, stops=["<|end|>", "<|end|>", "</s>"],
                     system='say "hi"', parameters={"temperature": 0.2})
    assert text.splitlines() == ["FROM ./model.gguf", "ADAPTER ./adapter.gguf", 'SYSTEM """say "hi\""""', 'PARAMETER stop "<|end|>"',
                                 'PARAMETER stop "</s>"', "PARAMETER temperature 0.2"]


def test_export_ollama_writes_modelfile_next_to_gguf(gstore: Any, tiny: dict[str, Any], lora: Any) -> None:
    g = run_stage("export.gguf", {"model": tiny["llama"], "adapter": lora[1]}, {"qtype": "q8_0"}, store=gstore).artifact
    o = run_stage("export.ollama", {"model": g}, {"system": "be brief", "num_ctx": 512}, store=gstore).artifact
    files = sorted(p.name for p in o.path.iterdir())
    assert files == ["Modelfile", "adapter.gguf", "gguf.json", "manifest.json", "model.gguf"]
    assert os.path.samefile(o.path / "model.gguf", g.path / "model.gguf")  # a hard link, not a second copy
    text = (o.path / "Modelfile").read_text()
    assert text.startswith("FROM ./model.gguf\nADAPTER ./adapter.gguf\nTEMPLATE \"\"\"" + PHI_TEMPLATE + '"""\n')
    assert 'PARAMETER stop "<|end|>"\nPARAMETER stop "</s>"\n' in text and "PARAMETER num_ctx 512" in text and 'SYSTEM """be brief"""' in text
    assert o.kind == "gguf" and [p.role for p in o.manifest.parents] == ["model"] and o.manifest.meta["template"]
    q = run_stage("export.gguf", {"model": tiny["qwen2"]}, {"qtype": "q8_0"}, store=gstore).artifact
    text = (run_stage("export.ollama", {"model": q}, {}, store=gstore).artifact.path / "Modelfile").read_text()
    assert "{{ if $last }}<|im_start|>assistant\n{{ end }}" in text and 'PARAMETER stop "<|im_end|>"' in text
