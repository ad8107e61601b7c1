"""Foundry Local bring-your-own-model packages: an ONNX GenAI folder laid out the way Foundry Local's cache expects.

Foundry Local (the service and its v2 SDK, ``foundry-local-sdk``) finds a cached model in
``<cache>/<publisher>/<name>-<version>/``: a folder with ``genai_config.json``, the ONNX files and
tokenizer, and ``inference_model.json``::

    {"Name": "<name>:<version>",
     "PromptTemplate": {"system": "...{Content}...", "user": "...", "assistant": "...", "prompt": "...{Content}..."}}

:func:`build_package` writes exactly that under the artifact (``<publisher>/<name>-<version>/``) plus
a ``README.md`` saying how to use it: copy the publisher folder into Foundry Local's cache, or
register the model folder with the v2 SDK's local catalog. The prompt templates are derived from
the model's own chat template by rendering it around a ``{Content}`` placeholder
(:func:`prompt_template`); newer Foundry Local builds render ``chat_template.jinja`` through ORT
GenAI themselves, and both give the same prompt.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from slmops.errors import ConfigError, DataError
from slmops.runtimes.ortgenai_files import ADAPTER_DIR, read_folder

INFERENCE_MODEL = "inference_model.json"
CONTENT = "{Content}"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$"
_SKIP = {"manifest.json", ADAPTER_DIR}


class FoundryConfig(BaseModel):
    """Config of ``export.foundry``: the model's name, version and publisher in Foundry Local."""

    model_config = ConfigDict(extra="forbid")

    model_name: str | None = Field(
        None, pattern=_NAME, description="Model name in Foundry Local (default: slmops-<architecture>-<precision>-<digest prefix>)"
    )
    version: int = Field(1, ge=0, le=1_000_000, description="Model version (the ':N' of the model id)")
    publisher: str = Field("slmops", pattern=_NAME, description="Publisher folder in Foundry Local's cache")
    task: Literal["chat-completion"] = Field("chat-completion", description="Foundry Local task of the model")


def _strip(text: str, prefix: str) -> str:
    return text[len(prefix):] if prefix and text.startswith(prefix) else text


def prompt_template(template: str, *, bos_token: str = "", eos_token: str = "") -> dict[str, str]:
    """Foundry Local's ``PromptTemplate`` (system/user/assistant turns and the one-turn ``prompt``) from a chat template."""
    from slmops.data.templates import render_chat

    def render(messages: list[dict[str, str]], gen: bool) -> str:
        return render_chat(template, messages, add_generation_prompt=gen, bos_token=bos_token, eos_token=eos_token)

    user = {"role": "user", "content": CONTENT}
    try:
        prompt = render([user], True)
        lead = render([], False)
    except (ConfigError, DataError) as exc:
        raise ConfigError("the model's chat template cannot render a one-message chat", why=exc.message,
                          fix="give the model a chat template that takes system/user/assistant messages") from exc
    if CONTENT not in prompt:
        raise ConfigError("the model's chat template drops the message text", why=f"rendering {CONTENT!r} gave {prompt!r}",
                          fix="give the model a chat template that renders message['content']")
    out: dict[str, str] = {}
    for role in ("system", "user"):
        try:
            out[role] = _strip(render([{"role": role, "content": CONTENT}], False), lead)
        except (ConfigError, DataError):
            continue  # e.g. a template without a system role
    try:
        before = render([{"role": "user", "content": "x"}], False)
        out["assistant"] = _strip(render([{"role": "user", "content": "x"}, {"role": "assistant", "content": CONTENT}], False), before)
    except (ConfigError, DataError):
        pass
    out["prompt"] = prompt
    return out


def default_name(meta: dict[str, Any], digest: str) -> str:
    arch = str(meta.get("model_type") or "model").lower().replace("_", "-")
    return f"slmops-{arch}-{meta.get('precision', 'onnx')}-{digest[:8]}"


def build_package(onnx_dir: Path, out: Path, cfg: FoundryConfig, *, name: str) -> dict[str, Any]:
    """Write the Foundry Local package for the ONNX GenAI folder ``onnx_dir`` into ``out``; return its facts."""
    folder = read_folder(onnx_dir)
    if folder.adapters:
        raise ConfigError(
            "Foundry Local cannot switch LoRA adapters, and this ONNX model has run-time adapters",
            fix="export the model with --adapter-mode merge (the adapter merged in) and package that",
        )
    if not folder.chat_template:
        raise ConfigError("the ONNX model has no chat template, and Foundry Local serves chat models",
                          fix="give the source model a chat template (tokenizer_config.json) and export it again")
    model_id = f"{name}:{cfg.version}"
    rel = Path(cfg.publisher) / f"{name}-{cfg.version}"
    dest = out / rel
    dest.mkdir(parents=True)
    for item in sorted(folder.path.iterdir()):
        if item.name in _SKIP or item.name.startswith("."):
            continue
        if item.is_dir():
            shutil.copytree(item, dest / item.name)
        else:
            shutil.copyfile(item, dest / item.name)
    strings = folder.special_token_strings
    template = prompt_template(folder.chat_template, bos_token=strings.get("bos_token", ""), eos_token=strings.get("eos_token", ""))
    (dest / INFERENCE_MODEL).write_text(json.dumps({"Name": model_id, "PromptTemplate": template}, indent=2, ensure_ascii=False) + "\n",
                                        encoding="utf-8")
    (out / "README.md").write_text(_readme(model_id, rel, cfg), encoding="utf-8")
    return {"model_id": model_id, "model_dir": rel.as_posix(), "publisher": cfg.publisher, "task": cfg.task, "prompt_template": template,
            "context_length": folder.context_length}


def _readme(model_id: str, rel: Path, cfg: FoundryConfig) -> str:
    return f"""# {model_id} for Foundry Local

Made by `slmops export foundry`. The model folder is `{rel.as_posix()}/` (ONNX Runtime GenAI files,
`inference_model.json` with the prompt template).

* Foundry Local cache: copy the `{cfg.publisher}/` folder into the cache directory
  (`foundry cache location`), or point the cache at this folder (`foundry cache cd <this folder>`).
* Foundry Local SDK (v2, `pip install foundry-local-sdk`):

```python
from foundry_local_sdk import CatalogType, Configuration, FoundryLocalManager, ModelInfoBuilder
FoundryLocalManager.initialize(Configuration(app_name="my_app"))
catalog = FoundryLocalManager.instance.get_catalog(CatalogType.LOCAL)
with ModelInfoBuilder() as info:
    info.set_string_property("task", "{cfg.task}")
    model = catalog.register_model(model_path="<this folder>/{rel.as_posix()}", model_id="{model_id}", metadata=info)
model.load()
```
"""


def find_model_dir(package: Path) -> Path:
    """The model folder inside a Foundry Local package (the one holding ``inference_model.json``)."""
    found = sorted(p.parent for p in package.glob(f"*/*/{INFERENCE_MODEL}"))
    if len(found) != 1:
        raise ConfigError(f"{package} is not a Foundry Local package", why=f"found {len(found)} folders with {INFERENCE_MODEL}",
                          fix="make one with `slmops export foundry`")
    return found[0]
