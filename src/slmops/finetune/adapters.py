"""Several adapters per base: list them, merge one into its base, combine several into a new one.

An adapter artifact (kind ``adapter``, format ``peft``) is a standard PEFT folder whose manifest
records the base it was trained on (parent role ``model``) and its ``adapter_name``. So the
adapters of a base are simply its ``adapter`` children in the lineage graph, and a name such as
``support`` resolves among them (the newest wins when a name was trained more than once).

* :func:`merge_adapter` folds ``B·A·scale`` into the base weights (PEFT ``merge_and_unload``) and
  checks on a probe sequence that the merged model's logits match the unmerged one.
* :func:`combine_adapters` mixes adapters with PEFT ``add_weighted_adapter``: ``linear`` (same
  rank; combines the A and B matrices), ``cat`` (ranks add up; the exact weighted sum of the
  deltas) or ``svd`` (the weighted sum of the deltas, re-factored to ``svd_rank``).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from slmops._optional import require
from slmops.errors import ConfigError, RefError, StoreError
from slmops.models.loading import load_model_and_tokenizer, model_folder, quiet_progress
from slmops.store.artifact import Artifact
from slmops.store.registry import Store
from slmops.store.staging import scratch_dir

log = logging.getLogger(__name__)

PROBE_TEXT = "The quick brown fox jumps over the lazy dog. Where is my order?"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def adapter_config(adapter: Artifact) -> dict[str, Any]:
    path = adapter.file("adapter_config.json")
    if not path.is_file():
        raise StoreError(f"adapter sha256:{adapter.short} has no adapter_config.json", why="it is not a PEFT adapter folder")
    return json.loads(path.read_text())


def normalize_adapter_config(folder: Path) -> None:
    """Rewrite ``adapter_config.json`` with its module lists sorted.

    PEFT keeps ``target_modules`` as a set and writes it in hash order, which changes from one
    process to the next; sorting makes the same adapter the same bytes (and the same digest).
    """
    path = folder / "adapter_config.json"
    cfg = json.loads(path.read_text())
    for key in ("target_modules", "modules_to_save", "exclude_modules"):
        if isinstance(cfg.get(key), list):
            cfg[key] = sorted(cfg[key])
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def adapter_name_of(adapter: Artifact) -> str:
    m = adapter.manifest
    cfg = m.stage.config if m.stage else {}
    return str(cfg.get("adapter_name") or m.meta.get("adapter_name") or "default")


def list_adapters(store: Store, base: Artifact) -> list[dict[str, Any]]:
    """Every adapter trained on (or combined for) ``base``, oldest first."""
    rows = []
    for child, role in store.children(base.digest):
        if role != "model":
            continue
        try:
            art = store.get(child)
        except StoreError:
            continue
        if art.kind != "adapter":
            continue
        m = art.manifest
        try:
            acfg = adapter_config(art)
        except StoreError:
            acfg = {}
        rows.append({
            "adapter_name": adapter_name_of(art),
            "digest": art.digest,
            "stage": m.stage.name if m.stage else None,
            "method": "dora" if acfg.get("use_dora") else (m.stage.name.split(".")[-1] if m.stage else None),
            "rank": acfg.get("r"),
            "target_modules": sorted(acfg.get("target_modules") or []) if isinstance(acfg.get("target_modules"), list) else acfg.get("target_modules"),
            "val_loss": m.metrics.get("val_loss"),
            "names": store.names_of(art.digest),
            "tags": store.tags(art.digest),
            "created_at": m.created_at,
            "path": str(art.path),
        })
    return sorted(rows, key=lambda r: (r["created_at"], r["adapter_name"]))


def find_adapter(store: Store, base: Artifact, ref: str) -> Artifact:
    """An adapter of ``base`` by adapter name, else any adapter reference (name, digest, path)."""
    matches = [r for r in list_adapters(store, base) if r["adapter_name"] == ref]
    if matches:
        if len(matches) > 1:
            log.info("%d adapters of sha256:%s are named %r; using the newest", len(matches), base.short, ref)
        return store.get(matches[-1]["digest"])
    from slmops.stage.inputs import resolve_input

    try:
        return resolve_input(ref, store, kind="adapter")
    except (StoreError, RefError) as exc:
        names = sorted({r["adapter_name"] for r in list_adapters(store, base)})
        raise ConfigError(
            f"no adapter {ref!r} on base sha256:{base.short}",
            why=f"its adapters are: {', '.join(names) or 'none'}; and {ref!r} is no adapter reference ({exc.what})",
            fix=f"list them with `slmops adapters ls {base.short}`",
        ) from exc


def check_base(adapter: Artifact, base: Artifact, *, allow_other_base: bool) -> None:
    trained_on = [p.digest for p in adapter.manifest.parents if p.role == "model"]
    if trained_on and base.digest not in trained_on and not allow_other_base:
        raise ConfigError(
            f"adapter sha256:{adapter.short} was trained on sha256:{trained_on[0][:12]}, not on sha256:{base.short}",
            why="an adapter only makes sense on the weights it was trained against",
            fix="pass the base it was trained on, or --allow-other-base if the bases share an architecture on purpose",
        )


def load_with_adapters(base: Artifact, adapters: list[tuple[str, Artifact]]) -> tuple[Any, Any]:
    """(PeftModel with every adapter loaded, tokenizer); the first adapter is active."""
    peft = require("peft", extra="train", purpose="loading adapters")
    model, tokenizer = load_model_and_tokenizer(base)
    name, first = adapters[0]
    with quiet_progress():
        pm = peft.PeftModel.from_pretrained(model, str(first.path), adapter_name=name, is_trainable=False)
        for name, art in adapters[1:]:
            pm.load_adapter(str(art.path), adapter_name=name, is_trainable=False)
    pm.eval()
    return pm, tokenizer


def probe_logits(model: Any, tokenizer: Any) -> Any:
    torch = require("torch", extra="train")
    ids = tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def copy_tokenizer(base: Artifact, out: Path) -> None:
    skip = {"config.json", "generation_config.json", "manifest.json", "README.md"}
    for f in sorted(model_folder(base).iterdir()):
        if f.is_file() and f.name not in skip and not f.name.endswith((".safetensors", ".safetensors.index.json")):
            shutil.copyfile(f, out / f.name)


def merge_adapter(base: Artifact, adapter: Artifact, out: Path, *, dtype: str = "float32") -> dict[str, Any]:
    """Write ``base`` with ``adapter`` merged in as a complete HF folder; returns facts incl. the logit check."""
    torch = require("torch", extra="train")
    pm, tokenizer = load_with_adapters(base, [("default", adapter)])
    before = probe_logits(pm, tokenizer)
    merged = pm.merge_and_unload()
    after = probe_logits(merged, tokenizer)
    diff = float((before - after).abs().max())
    if dtype != "float32":
        merged = merged.to(getattr(torch, dtype))
    merged.config.use_cache = True
    with quiet_progress():
        merged.save_pretrained(str(out), safe_serialization=True)
    copy_tokenizer(base, out)
    acfg = adapter_config(adapter)
    log.info("merged adapter sha256:%s into sha256:%s (max |Δlogit| %.2e)", adapter.short, base.short, diff)
    return {"max_abs_logit_diff": diff, "adapter_name": adapter_name_of(adapter), "rank": acfg.get("r"), "use_dora": bool(acfg.get("use_dora"))}


def combine_adapters(base: Artifact, adapters: list[Artifact], out: Path, *, weights: list[float], method: str,
                     svd_rank: int | None = None) -> dict[str, Any]:
    """Write the weighted combination of ``adapters`` (on ``base``) as a new PEFT adapter folder."""
    configs = [adapter_config(a) for a in adapters]
    for a, c in zip(adapters, configs, strict=True):
        if c.get("use_dora"):
            raise ConfigError(f"adapter sha256:{a.short} is a DoRA adapter, which cannot be combined",
                              why="PEFT combines the low-rank A/B matrices but not DoRA's magnitude vectors",
                              fix="merge DoRA adapters into the base one at a time (`slmops adapters merge`)")
    ranks = [c.get("r") for c in configs]
    if method == "linear" and len(set(ranks)) > 1:
        raise ConfigError(f"--method linear needs adapters of one rank (got {', '.join(map(str, ranks))})",
                          why="it averages the A and B matrices element by element", fix="use --method cat or --method svd")
    saved = [a.short for a, c in zip(adapters, configs, strict=True) if c.get("modules_to_save")]
    if len(saved) > 1:
        raise ConfigError(f"adapters {', '.join(saved)} each train full modules (modules_to_save)", why="those cannot be combined",
                          fix="combine at most one adapter with --modules-to-save")
    names = [f"a{i}" for i in range(len(adapters))]
    pm, _ = load_with_adapters(base, list(zip(names, adapters, strict=True)))
    kw: dict[str, Any] = {"combination_type": method}
    if method == "svd":
        kw["svd_rank"] = svd_rank or max(r or 1 for r in ranks)
    try:
        pm.add_weighted_adapter(names, list(weights), "combined", **kw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"PEFT cannot combine these adapters with --method {method}", why=str(exc)) from exc
    with scratch_dir(out, "combine-") as tmp, quiet_progress():
        pm.save_pretrained(str(tmp), selected_adapters=["combined"], safe_serialization=True)
        src = Path(tmp) / "combined"
        for name in ADAPTER_FILES:
            shutil.move(str(src / name), str(out / name))
    normalize_adapter_config(out)
    new = json.loads((out / "adapter_config.json").read_text())
    return {"rank": new.get("r"), "combined_from": [a.digest for a in adapters], "weights": list(weights), "combination": method}
