"""Importance of layers, channels, neurons and heads, measured on calibration text in one forward pass.

* **Layers** — block influence (ShortGPT): ``1 − mean cos(x_in, x_out)`` between a decoder
  block's input and output hidden states over every calibration token. A block whose output
  points where its input did changes little and is the first to go.
* **Hidden channels** — Minitron: the mean magnitude of each channel at the output of every
  RMSNorm (the inputs of attention, MLP and the head), summed over the layers.
* **MLP neurons** — the mean magnitude of each neuron at the input of ``down_proj``.
* **Attention heads** — the mean L2 norm of each head's output at the input of ``o_proj``.
* **Residual energy** — the mean square of each channel at the input of every RMSNorm, so a norm
  over fewer channels can be rescaled to keep its output's scale (see :mod:`slmops.models.prune`).

Works on the llama family (llama, mistral, qwen2) and phi3 through their module names
(``model.layers[i].self_attn.o_proj``, ``mlp.down_proj``, ``input_layernorm`` …).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slmops._optional import require


@dataclass
class Importance:
    """What :func:`measure` found; every score is "bigger = more important"."""

    block_influence: list[float]
    hidden: list[float]
    neurons: list[list[float]]
    heads: list[list[float]]
    #: norm name (``layers.3.input_layernorm``, ``norm``) → mean square of each input channel
    energy: dict[str, list[float]] = field(default_factory=dict)
    tokens: int = 0


class _Sum:
    """Running sums of per-channel statistics, averaged over tokens at the end."""

    def __init__(self) -> None:
        self.sums: dict[str, Any] = {}

    def add(self, key: str, value: Any) -> None:
        self.sums[key] = value if key not in self.sums else self.sums[key] + value

    def mean(self, key: str, n: int) -> list[float]:
        return (self.sums[key] / max(n, 1)).tolist()


def _first(x: Any) -> Any:
    return x[0] if isinstance(x, tuple | list) else x


def measure(model: Any, chunks: list[list[int]], *, batch_size: int = 4, on_batch: Any = None) -> Importance:
    """Run ``model`` over ``chunks`` (equal-length token windows) and collect every importance score."""
    torch = require("torch", extra="train", purpose="measuring importance")
    layers = model.model.layers
    cfg = model.config
    n_heads = cfg.num_attention_heads
    sums = _Sum()
    handles = []

    def on_block(i: int) -> Any:
        def hook(mod: Any, args: Any, kwargs: Any, output: Any) -> None:
            x_in = args[0] if args else kwargs["hidden_states"]
            x_out = _first(output)
            cos = torch.nn.functional.cosine_similarity(x_in.float(), x_out.float(), dim=-1)
            sums.add(f"bi.{i}", (1.0 - cos).sum())

        return hook

    def on_norm(name: str, hidden_key: str | None) -> Any:
        def hook(mod: Any, args: Any, output: Any) -> None:
            x = args[0].float()
            sums.add(f"energy.{name}", x.pow(2).sum(dim=(0, 1)))
            if hidden_key is not None:
                sums.add("hidden", output.float().abs().sum(dim=(0, 1)))

        return hook

    def on_down(i: int) -> Any:
        def hook(mod: Any, args: Any) -> None:
            sums.add(f"neurons.{i}", args[0].float().abs().sum(dim=(0, 1)))

        return hook

    def on_o(i: int) -> Any:
        def hook(mod: Any, args: Any) -> None:
            x = args[0].float()
            b, s, d = x.shape
            sums.add(f"heads.{i}", x.view(b, s, n_heads, d // n_heads).norm(dim=-1).sum(dim=(0, 1)))

        return hook

    try:
        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_hook(on_block(i), with_kwargs=True))
            handles.append(layer.input_layernorm.register_forward_hook(on_norm(f"layers.{i}.input_layernorm", "hidden")))
            handles.append(layer.post_attention_layernorm.register_forward_hook(on_norm(f"layers.{i}.post_attention_layernorm", "hidden")))
            handles.append(layer.mlp.down_proj.register_forward_pre_hook(on_down(i)))
            handles.append(layer.self_attn.o_proj.register_forward_pre_hook(on_o(i)))
        handles.append(model.model.norm.register_forward_hook(on_norm("norm", "hidden")))
        tokens = 0
        with torch.no_grad():
            for start in range(0, len(chunks), batch_size):
                ids = torch.tensor(chunks[start : start + batch_size], dtype=torch.long)
                model(input_ids=ids, use_cache=False)
                tokens += ids.numel()
                if on_batch is not None:
                    on_batch(len(ids))
    finally:
        for h in handles:
            h.remove()
    n = len(layers)
    energy = {k.removeprefix("energy."): sums.mean(k, tokens) for k in sums.sums if k.startswith("energy.")}
    return Importance(
        block_influence=[float(sums.sums[f"bi.{i}"]) / max(tokens, 1) for i in range(n)],
        hidden=sums.mean("hidden", tokens),
        neurons=[sums.mean(f"neurons.{i}", tokens) for i in range(n)],
        heads=[sums.mean(f"heads.{i}", tokens) for i in range(n)],
        energy=energy,
        tokens=tokens,
    )


def perplexity(model: Any, chunks: list[list[int]], *, batch_size: int = 4) -> float | None:
    """Token-weighted perplexity of ``model`` on ``chunks`` (every token after the first of each window)."""
    if not chunks:
        return None
    import math

    torch = require("torch", extra="train", purpose="measuring perplexity")
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(chunks), batch_size):
            ids = torch.tensor(chunks[start : start + batch_size], dtype=torch.long)
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
            total += float(nll)
            count += ids[:, 1:].numel()
    return math.exp(total / count)
