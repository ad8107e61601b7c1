"""Which artifact a request's ``model`` means: registry names, versions, aliases, canary groups and adapters.

A model id resolves *per request*, so re-pointing an alias (``slmops models alias bot@prod bot:4``)
moves new requests without a restart while requests in flight finish on the version they started
with. Lookups are cached for :data:`CACHE_S` seconds to keep the registry off the hot path.

A canary group (``--canary bot@prod=90,bot@canary=10``) is served under its first ref; each request
draws one of the refs by weight. An adapter artifact (kind ``adapter``) resolves to a base plus the
adapter: a PEFT adapter to its ``model`` parent — or, when that model is not served here but a
GGUF export of it is, to that GGUF (llama.cpp converts the adapter to a GGUF LoRA on load, so no fp32
torch copy is loaded next to the GGUF) —, a GGUF LoRA (``export.gguf_lora``) to the one GGUF
export of that parent it can go on. An adapter packaged in an ONNX export is the id ``MODEL/NAME``
(``bot-onnx/tuned``) on top of ``MODEL``. An adapter loaded at run time (``/v1/load_lora_adapter``)
is an id of its own on the base it was loaded for; :mod:`slmops.serve.adapters` says which adapter
formats go on which base. Filesystem paths and hub ids are never model ids.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from slmops import formats
from slmops.errors import SlmopsError
from slmops.serve import adapters as ad
from slmops.serve.config import ServeConfig
from slmops.serve.protocol import APIError, bad_request, not_found
from slmops.store.artifact import Artifact
from slmops.store.refs import ModelRef
from slmops.store.registry import Store

CACHE_S = 0.25


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
    base_label: str | None = None  # how the pool names the base when an adapter loads it ("bot:3")

    @property
    def base_digest(self) -> str:
        return self.base.digest


@dataclass(frozen=True)
class _Lora:
    name: str
    source: ad.AdapterSource
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
            return Target(model_id, ref, t.digest, t.version, t.base, t.adapter, t.adapter_path, t.base_label)
        packaged = self._packaged_target(model_id)
        if packaged is not None:
            return packaged
        if self.restricted() and model_id not in self.allowed():
            raise not_found(model_id, sorted(self.allowed() | set(self.loras)))
        t = self._lookup(model_id)
        return Target(model_id, model_id, t.digest, t.version, t.base, t.adapter, t.adapter_path, t.base_label)

    def name_of(self, digest: str) -> str | None:
        """``name:version`` of an artifact (a full digest or a prefix), or None when it has no name (or is gone)."""
        with self._lock:
            try:
                art = self.store.get(digest) if len(digest) == 64 else self.store.find_prefix(digest)
                names = self.store.names_of(art.digest)
            except SlmopsError:
                return None
        return names[-1] if names else None

    def label(self, model_id: str, target: Target | None) -> str:
        """The ``model`` label of a request's metrics: a served id, or a bounded stand-in — never raw client text.

        A served id (listed, canary group or branch, ``/openai/load``-ed, run-time LoRA, or any id that
        resolved when the list is restricted) is its own label. Serving the whole store, an id that
        resolved is its own label when it is a name written canonically (``bot``, ``bot:3``,
        ``bot@prod``) and otherwise the version that answered (``bot:3``, ``sha256:<12>``). An id that
        does not resolve is ``unknown``.
        """
        if model_id in self.loras or model_id in self.config.canary or model_id in self.allowed():
            return model_id
        if target is None and not self.restricted():
            try:
                target = self.resolve(model_id)
            except Exception:  # noqa: BLE001 - a label must never fail the request it counts
                return "unknown"
        if target is None:
            return "unknown"
        if self.restricted():
            return model_id
        try:
            ref = ModelRef.parse(model_id)
        except SlmopsError:
            return target.version
        return model_id if ref.scheme == "name" and str(ref) == model_id else target.version

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

    def _artifact(self, text: str) -> tuple[Artifact, str]:
        """The artifact a name or digest ref means and its version label; 404 when there is none."""
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
                return art, self._version_label(ref, art)
            except (SlmopsError, OverflowError):  # OverflowError: a version past SQLite's 64 bits names nothing
                raise not_found(text) from None

    def _resolve_ref(self, text: str) -> Target:
        art, version = self._artifact(text)
        if art.kind in formats.model_kinds():
            return Target(text, text, art.digest, version, art)
        if art.kind != "adapter":
            raise bad_request(f"{text!r} is a {art.kind} artifact, not a model", param="model", code="model_not_servable")
        if art.manifest.format == ad.GGUF_LORA:
            src = ad.AdapterSource(ad.GGUF_LORA, art.path, art.digest, text, self._trained_on(art))
            base_ref = self._choose_base(src, None, param="model")
            base = self._lookup(base_ref).base
        else:
            base = self._adapter_base(art, text)
            base = self._served_gguf_of(base, text) or base
        with self._lock:
            names = self.store.names_of(base.digest)
        return Target(text, text, art.digest, version, base, adapter=f"adapter-{art.short}", adapter_path=art.path,
                      base_label=names[-1] if names else None)

    def _version_label(self, ref: ModelRef, art: Artifact) -> str:
        if ref.scheme == "name":
            if ref.version is not None:
                return f"{ref.value}:{ref.version}"
            if ref.alias is not None:
                return f"{ref.value}:{self.store.aliases(ref.value)[ref.alias]}"
            return f"{ref.value}:{self.store.versions(ref.value)[-1]['version']}"
        names = self.store.names_of(art.digest)
        return names[-1] if names else f"sha256:{art.short}"

    def _trained_on(self, art: Artifact) -> str | None:
        with self._lock:
            parents = [d for d, role in self.store.parents(art.digest) if role == "model"]
        return parents[0] if parents else None

    def _adapter_base(self, art: Artifact, text: str) -> Artifact:
        parent = self._trained_on(art)
        if parent is None:
            raise bad_request(
                f"adapter {text!r} has no recorded base model (no 'model' parent)",
                param="model",
                code="model_not_servable",
            )
        with self._lock:
            return self.store.get(parent)

    def _served_gguf_of(self, base: Artifact, adapter_id: str) -> Artifact | None:
        """A GGUF export of ``base`` served here (listed, loaded or in a canary), carrying no adapter of its own,
        when ``base`` itself is not served: a PEFT adapter id then runs on it, converted to a GGUF LoRA on load."""
        ids = [i for i in self._served_ids() if i != adapter_id]
        found: list[Artifact] = []
        for ref in ids:
            try:
                art, _ = self._artifact(ref)
            except APIError:
                continue
            if art.digest == base.digest:
                return None  # the model it was trained on is served: the adapter goes on it, exactly
            if art.kind != "gguf":
                continue
            with self._lock:
                roles = {role for _, role in self.store.parents(art.digest)}
                made_from = ad.source_model(self.store, art)
            if made_from == base.digest and "adapter" not in roles:
                found.append(art)
        return found[0] if found else None

    def _packaged_target(self, model_id: str) -> Target | None:
        """``MODEL/NAME``: the adapter ``NAME`` packaged in the ONNX export ``MODEL`` (None: not that form)."""
        base_id, sep, name = model_id.rpartition("/")
        if not sep or not base_id or not name or model_id.startswith((".", "/", "~")):
            return None
        try:
            base = self.resolve(base_id)
        except APIError as exc:
            if exc.status == 404:
                raise not_found(model_id, sorted(self.allowed() | set(self.loras)) if self.restricted() else None) from None
            raise
        file = ad.packaged(base.base).get(name) if base.adapter is None else None
        if file is None:
            raise not_found(model_id)
        return Target(model_id, f"{base.ref}/{name}", base.digest, f"{base.version}/{name}", base.base, adapter=name, adapter_path=file,
                      base_label=base.version)

    # ------------------------------------------------------------------ run-time adapters

    def add_lora(self, name: str, lora_path: str, base_model: str | None) -> Target:
        """Register an adapter under ``name`` (vLLM's ``/v1/load_lora_adapter``); returns its target.

        ``lora_path`` is a store reference to an adapter, an adapter id (``bot-onnx/tuned``), or a
        path (PEFT folder, GGUF LoRA, ``.onnx_adapter``); ``base_model`` a served base id (default:
        the one base served here the adapter fits, else the model it was trained on).
        """
        if name in self.loras or name in self.config.canary or name in self.config.models:
            raise bad_request(f"the model id {name!r} is already served", param="lora_name", code="lora_exists")
        src = self._adapter_source(lora_path)
        lora = _Lora(name, src, self._choose_base(src, base_model, param="base_model"))
        target = self._lora_target(lora, name)
        self.loras[name] = lora
        return target

    def _adapter_source(self, text: str) -> ad.AdapterSource:
        """What ``lora_path`` names, checked; 400 ``invalid_lora`` when it is not a usable adapter."""
        try:
            try:
                t = self._packaged_target(text)
            except APIError:
                t = None
            if t is not None and t.adapter_path is not None:
                with self._lock:
                    made_from = ad.source_model(self.store, t.base)
                return ad.AdapterSource(ad.ONNX_ADAPTER, t.adapter_path, t.digest, repr(text), made_from,
                                        default_base=t.ref.rpartition("/")[0])
            if text.startswith((".", "/", "~")) or "/" in text or "\\" in text:
                with self._lock:
                    return ad.from_path(self.store, text)
            try:
                art, _ = self._artifact(text)
            except APIError:
                raise bad_request(f"no adapter {text!r} in the store", param="lora_path", code="invalid_lora") from None
            with self._lock:
                return ad.from_artifact(self.store, art, repr(text))
        except SlmopsError as exc:
            raise bad_request(exc.message, param="lora_path", code="invalid_lora") from exc

    def _served_ids(self) -> list[str]:
        ids = [*self.config.models, *sorted(self.extra)]
        for refs in self.config.canary.values():
            ids += list(refs)
        return list(dict.fromkeys(ids))

    def _fits(self, src: ad.AdapterSource, base: Artifact, base_id: str, *, param: str) -> None:
        try:
            with self._lock:
                ad.check_fits(src, base, base_id, self.store)
        except ad.AdapterMismatch as exc:
            raise bad_request(exc.message, param=param, code="lora_base_mismatch") from exc

    def _candidates(self, src: ad.AdapterSource) -> dict[str, str]:
        """Bases ``src`` fits, as ``{digest: id}``: the ids served here, or (serving the whole store) the adapter's base and its exports."""
        ids = self._served_ids()
        if not self.restricted() and src.trained_on is not None:
            with self._lock:
                exports = [d for d, role in self.store.children(src.trained_on) if role == "model"]
            ids += [f"sha256:{src.trained_on}", *(f"sha256:{d}" for d in exports)]
        out: dict[str, str] = {}
        for ref in ids:
            try:
                art, _ = self._artifact(ref)  # not _lookup: an adapter id among them would come back here
                if art.kind in formats.model_kinds():
                    self._fits(src, art, ref, param="base_model")
                    out.setdefault(art.digest, ref)
            except APIError:
                continue
        return out

    def _choose_base(self, src: ad.AdapterSource, base_model: str | None, *, param: str) -> str:
        """The served base ``src`` goes on (checked: format and lineage); 400 when it cannot be told."""
        if base_model is not None:
            try:
                t = self._lookup(base_model)
            except APIError as exc:
                if exc.status != 404:
                    raise
                raise APIError(404, f"base_model {base_model!r} is not a model in the store; list them with GET /v1/models",
                               param=param, code="model_not_found") from None
            if t.adapter is not None:
                raise bad_request(f"base_model {base_model!r} is itself an adapter; name the model it goes on (a model, GGUF or ONNX id)",
                                  param=param, code="lora_base_mismatch")
            self._fits(src, t.base, base_model, param=param)
            return base_model
        found = self._candidates(src)
        if src.default_base is not None:
            try:
                default = self._lookup(src.default_base)
            except APIError:
                default = None
            if default is not None and default.base.digest in found:
                return found[default.base.digest]
            if default is not None and not found and default.adapter is None:
                self._fits(src, default.base, src.default_base, param=param)
                return src.default_base
        if len(found) == 1:
            return next(iter(found.values()))
        kinds = {ad.GGUF_LORA: "GGUF ", ad.ONNX_ADAPTER: "ONNX "}.get(src.fmt, "")
        raise bad_request(
            f"{src.label} fits {'none' if not found else 'several'} of the {kinds}models served here"
            + (f" ({', '.join(sorted(found.values()))})" if found else "")
            + "; say which one it goes on with base_model (in /v1/load_lora_adapter)",
            param=param,
            code="lora_base_mismatch" if not found else "base_model_required",
        )

    def _lora_target(self, lora: _Lora, requested: str) -> Target:
        base = self._lookup(lora.base_ref)
        if base.adapter is not None:
            raise bad_request(f"base_model {lora.base_ref!r} is itself an adapter", param="base_model")
        try:
            ad.check_fits(lora.source, base.base, lora.base_ref)  # an alias may have moved to another format
        except ad.AdapterMismatch as exc:
            raise bad_request(exc.message, param="model", code="lora_base_mismatch") from exc
        return Target(requested, lora.name, lora.source.digest, lora.name, base.base,
                      adapter=f"lora-{lora.name}", adapter_path=lora.source.path, base_label=base.version)

    # ------------------------------------------------------------------ listing

    def list_ids(self) -> list[str]:
        """The ids GET /v1/models shows (adapters packaged in an ONNX export follow their model as ``MODEL/NAME``)."""
        if self.restricted():
            ids = [*self.config.models, *self.config.canary, *sorted(self.extra - set(self.config.models))]
            bases = list(ids)
        else:
            ids, bases = [], []
            with self._lock:
                rows = self.store.artifacts_list()
            for r in rows:
                if r["kind"] not in formats.runnable_kinds() or not r["name"]:
                    continue
                if r["name"] not in ids:
                    ids.append(r["name"])
                    if r["kind"] == "onnx":
                        bases.append(r["name"])
                ids += [f"{r['name']}@{a}" for a in r["aliases"]]
        for b in bases:
            try:
                t = self._lookup(next(iter(self.config.canary[b])) if b in self.config.canary else b)
            except APIError:
                continue
            if t.adapter is None:
                ids += [f"{b}/{n}" for n in ad.packaged(t.base)]
        return list(dict.fromkeys([*ids, *self.loras]))
