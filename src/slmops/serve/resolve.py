"""Which artifact a request's ``model`` means: registry names, versions, aliases, canary groups and adapters.

A model id resolves *per request*, so re-pointing an alias (``slmops models alias bot@prod bot:4``)
moves new requests without a restart while requests in flight finish on the version they started
with. Lookups are cached for :data:`CACHE_S` seconds to keep the registry off the hot path.

A canary group (``--canary bot@prod=90,bot@canary=10``) is served under its first ref; each request
draws one of the refs by weight. An adapter artifact (kind ``adapter``) resolves to its ``model``
parent plus the adapter, and so does an adapter loaded at run time under a name of its own.
Filesystem paths and hub ids are never model ids.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from slmops.errors import SlmopsError
from slmops.serve.config import ServeConfig
from slmops.serve.protocol import APIError, bad_request, not_found
from slmops.store.artifact import Artifact
from slmops.store.refs import ModelRef
from slmops.store.registry import Store

CACHE_S = 0.25
BASE_KINDS = ("model", "onnx", "gguf")


@dataclass(frozen=True)
class Target:
    """What one request runs on."""

    requested: str  # the id the client sent
    ref: str  # the ref it resolved through (a canary group's branch)
    digest: str  # the served artifact (model or adapter)
    version: str  # "bot:3", or "sha256:<12>" for an unnamed artifact
    base: Artifact  # what the runtime opens
    adapter: str | None = None  # the adapter's name inside the runtime
    adapter_path: Path | None = None

    @property
    def base_digest(self) -> str:
        return self.base.digest


@dataclass(frozen=True)
class _Lora:
    name: str
    path: Path
    digest: str
    base_ref: str


class Catalog:
    """Resolves model ids against the store and lists what is served."""

    def __init__(self, store: Store, config: ServeConfig) -> None:
        self.store = store
        self.config = config
        self.extra: set[str] = set()  # ids loaded through /openai/load
        self.loras: dict[str, _Lora] = {}
        self._cache: dict[str, tuple[float, Target]] = {}
        self._lock = threading.Lock()
        self._rng = random.Random(config.canary_seed)

    # ------------------------------------------------------------------ resolving

    def restricted(self) -> bool:
        return bool(self.config.models or self.config.canary)

    def allowed(self) -> set[str]:
        ids = set(self.config.models) | self.extra | set(self.config.canary)
        for refs in self.config.canary.values():
            ids |= set(refs)
        return ids

    def resolve(self, model_id: str) -> Target:
        """The target for a request's ``model``; :class:`APIError` 404 when nothing served matches."""
        if model_id in self.loras:
            return self._lora_target(self.loras[model_id], model_id)
        if model_id in self.config.canary:
            refs = self.config.canary[model_id]
            ref = self._rng.choices(list(refs), weights=list(refs.values()))[0]
            t = self._lookup(ref)
            return Target(model_id, ref, t.digest, t.version, t.base, t.adapter, t.adapter_path)
        if self.restricted() and model_id not in self.allowed():
            raise not_found(model_id, sorted(self.allowed() | set(self.loras)))
        t = self._lookup(model_id)
        return Target(model_id, model_id, t.digest, t.version, t.base, t.adapter, t.adapter_path)

    def invalidate(self) -> None:
        with self._lock:
            self._cache.clear()

    def _lookup(self, ref: str) -> Target:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(ref)
            if hit is not None and now - hit[0] < CACHE_S:
                return hit[1]
        target = self._resolve_ref(ref)
        with self._lock:
            self._cache[ref] = (now, target)
        return target

    def _resolve_ref(self, text: str) -> Target:
        try:
            ref = ModelRef.parse(text)
        except SlmopsError:
            raise not_found(text) from None
        if ref.scheme not in ("name", "digest"):
            raise not_found(text)
        with self._lock:
            try:
                if ref.scheme == "digest":
                    art = self.store.find_prefix(ref.value)
                else:
                    art = self.store.lookup(ref.value, version=ref.version, alias=ref.alias)
                version = self._version_label(ref, art)
            except SlmopsError:
                raise not_found(text) from None
            if art.kind in BASE_KINDS:
                return Target(text, text, art.digest, version, art)
            if art.kind != "adapter":
                raise bad_request(f"{text!r} is a {art.kind} artifact, not a model", param="model", code="model_not_servable")
            base = self._adapter_base(art, text)
        return Target(text, text, art.digest, version, base, adapter=f"adapter-{art.short}", adapter_path=art.path)

    def _version_label(self, ref: ModelRef, art: Artifact) -> str:
        if ref.scheme == "name":
            if ref.version is not None:
                return f"{ref.value}:{ref.version}"
            if ref.alias is not None:
                return f"{ref.value}:{self.store.aliases(ref.value)[ref.alias]}"
            return f"{ref.value}:{self.store.versions(ref.value)[-1]['version']}"
        names = self.store.names_of(art.digest)
        return names[-1] if names else f"sha256:{art.short}"

    def _adapter_base(self, art: Artifact, text: str) -> Artifact:
        parents = [d for d, role in self.store.parents(art.digest) if role == "model"]
        if not parents:
            raise bad_request(
                f"adapter {text!r} has no recorded base model (no 'model' parent)",
                param="model",
                code="model_not_servable",
            )
        return self.store.get(parents[0])

    # ------------------------------------------------------------------ run-time adapters

    def add_lora(self, name: str, lora_path: str, base_model: str | None) -> Target:
        """Register an adapter under ``name`` (vLLM's ``/v1/load_lora_adapter``); returns its target."""
        if name in self.loras or name in self.config.canary or name in self.config.models:
            raise bad_request(f"the model id {name!r} is already served", param="lora_name", code="lora_exists")
        path_like = lora_path.startswith((".", "/", "~")) or "/" in lora_path
        if path_like:
            path = Path(lora_path).expanduser().resolve()
            if not (path / "adapter_config.json").is_file() or not (path / "adapter_model.safetensors").is_file():
                raise bad_request(
                    f"{lora_path} is not a PEFT adapter folder with safetensors weights",
                    param="lora_path",
                    code="invalid_lora",
                )
            if base_model is None:
                bases = [m for m in self.config.models if self._try_base(m)]
                if len(bases) != 1:
                    raise bad_request("say which served model the adapter goes on with base_model", param="base_model")
                base_model = bases[0]
            lora = _Lora(name, path, f"path:{path}", base_model)
        else:
            t = self._lookup(lora_path)
            if t.adapter is None or t.adapter_path is None:
                raise bad_request(f"{lora_path!r} is not an adapter artifact", param="lora_path", code="invalid_lora")
            lora = _Lora(name, t.adapter_path, t.digest, base_model or f"sha256:{t.base.digest}")
        target = self._lora_target(lora, name)
        self.loras[name] = lora
        return target

    def _try_base(self, model_id: str) -> bool:
        try:
            return self._lookup(model_id).adapter is None
        except APIError:
            return False

    def _lora_target(self, lora: _Lora, requested: str) -> Target:
        base = self._lookup(lora.base_ref)
        if base.adapter is not None:
            raise bad_request(f"base_model {lora.base_ref!r} is itself an adapter", param="base_model")
        return Target(requested, lora.name, lora.digest, lora.name, base.base, adapter=f"lora-{lora.name}", adapter_path=lora.path)

    # ------------------------------------------------------------------ listing

    def list_ids(self) -> list[str]:
        """The ids GET /v1/models shows."""
        if self.restricted():
            ids = [*self.config.models, *self.config.canary, *sorted(self.extra - set(self.config.models))]
        else:
            ids = []
            with self._lock:
                rows = self.store.artifacts_list()
            for r in rows:
                if r["kind"] not in (*BASE_KINDS, "adapter") or not r["name"]:
                    continue
                if r["name"] not in ids:
                    ids.append(r["name"])
                ids += [f"{r['name']}@{a}" for a in r["aliases"]]
        return list(dict.fromkeys([*ids, *self.loras]))
