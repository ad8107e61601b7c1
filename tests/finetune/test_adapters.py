"""Several adapters per base: list, merge (logits match within 1e-4), combine linear/cat/svd (loadable PEFT folders)."""

from __future__ import annotations

import json

import pytest

from slmops.errors import ConfigError
from tests.finetune.conftest import FAST, one_thread


@pytest.fixture(scope="module")
def second(ft_store, base, task):
    """A second named adapter on the same base (different seed and rank)."""
    from slmops.finetune.api import finetune

    with one_thread():
        return finetune(base, task, method="lora", config={**FAST, "seed": 3, "lora_rank": 4, "adapter_name": "second"}, store=ft_store).artifact


def _logits(model, tok):
    import torch

    ids = tok("Please refund order #4411, the blender broke.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def _with_adapter(base, path):
    from peft import PeftModel

    from slmops.models.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(base)
    return PeftModel.from_pretrained(model, str(path)).eval(), tok


def test_adapters_of_a_base_are_listed_by_name(ft_store, base, lora_adapter, second) -> None:
    from slmops.finetune.adapters import find_adapter, list_adapters

    rows = list_adapters(ft_store, base)
    names = {r["adapter_name"]: r for r in rows}
    assert {"default", "second"} <= set(names)
    assert names["second"]["rank"] == 4 and names["second"]["method"] == "lora"
    assert find_adapter(ft_store, base, "second").digest == second.digest
    assert find_adapter(ft_store, base, "support-lora").digest == lora_adapter.digest  # a registry name works too
    with pytest.raises(ConfigError, match="no adapter 'nope'"):
        find_adapter(ft_store, base, "nope")


def test_merge_matches_the_unmerged_model(ft_store, base, lora_adapter) -> None:
    from slmops.finetune.api import merge
    from slmops.models.loading import load_model_and_tokenizer

    r = merge(base, "support-lora", store=ft_store, name="tiny-support")
    art = r.artifact
    assert (art.kind, art.manifest.format) == ("model", "hf-safetensors")
    assert {p.role for p in art.manifest.parents} == {"model", "adapter"}
    assert art.manifest.metrics["max_abs_logit_diff"] < 1e-4
    peft_model, tok = _with_adapter(base, lora_adapter.path)
    merged, _ = load_model_and_tokenizer(art)
    assert float((_logits(peft_model, tok) - _logits(merged, tok)).abs().max()) < 1e-4
    base_model, _ = load_model_and_tokenizer(base)
    assert float((_logits(base_model, tok) - _logits(merged, tok)).abs().max()) > 1e-3  # the adapter did change something


@pytest.mark.parametrize(("method", "rank"), [("linear", None), ("cat", 12), ("svd", 6)])
def test_combine_makes_a_loadable_peft_adapter(method: str, rank: int | None, ft_store, base, lora_adapter, second, task) -> None:
    from slmops.finetune.api import combine, finetune

    others = ["support-lora", "second"]
    if method == "linear":  # linear needs equal ranks: a third rank-8 adapter
        third = finetune(base, task, method="lora", config={**FAST, "seed": 5, "adapter_name": "third"}, store=ft_store).artifact
        others = ["support-lora", third]
        rank = 8
    r = combine(base, others, weights=[0.7, 0.3], method=method, svd_rank=6 if method == "svd" else None, store=ft_store)
    art = r.artifact
    assert (art.kind, art.manifest.format) == ("adapter", "peft")
    assert sorted(p.name for p in art.path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "manifest.json"]
    assert json.loads((art.path / "adapter_config.json").read_text())["r"] == rank
    model, tok = _with_adapter(base, art.path)
    assert bool(_logits(model, tok).isfinite().all())
    from slmops.finetune.adapters import list_adapters

    assert art.digest in {row["digest"] for row in list_adapters(ft_store, base)}


def test_cat_with_weights_one_and_zero_reproduces_the_first_adapter(ft_store, base, lora_adapter, second) -> None:
    from slmops.finetune.api import combine

    art = combine(base, ["support-lora", "second"], weights=[1.0, 0.0], method="cat", store=ft_store).artifact
    one, tok = _with_adapter(base, lora_adapter.path)
    combined, _ = _with_adapter(base, art.path)
    assert float((_logits(one, tok) - _logits(combined, tok)).abs().max()) < 1e-4


def test_combine_refuses_what_peft_cannot_combine(ft_store, base, task, lora_adapter, second) -> None:
    from slmops.finetune.api import combine, finetune

    with pytest.raises(ConfigError, match="--method linear needs adapters of one rank"):
        combine(base, ["support-lora", "second"], weights=[0.5, 0.5], method="linear", store=ft_store)
    with pytest.raises(ConfigError, match="--weights has 1 value"):
        combine(base, ["support-lora", "second"], weights=[1.0], method="cat", store=ft_store)
    dora = finetune(base, task, method="dora", config={**FAST, "max_steps": 2}, store=ft_store).artifact
    with pytest.raises(ConfigError, match="DoRA adapter"):
        combine(base, [dora, "second"], weights=[0.5, 0.5], method="cat", store=ft_store)


def test_merge_refuses_an_adapter_of_another_base(ft_store, lora_adapter) -> None:
    from slmops.finetune.api import merge
    from slmops.testing.tiny import tiny_model

    other = tiny_model("llama", store=ft_store, seed=1)
    with pytest.raises(ConfigError, match="was trained on"):
        merge(other, lora_adapter, store=ft_store)
