"""Model management the way users know it: Foundry Local's ``/openai/load|unload|loadedmodels`` and vLLM's LoRA routes.

``GET|POST /openai/load/{name}?ttl=SECONDS`` loads a model (and adds it to what is served),
``GET|POST /openai/unload/{name}?force=true`` unloads it (``force`` cancels its running requests),
``GET /openai/loadedmodels`` lists the ids of loaded models and adapters.
``POST /v1/load_lora_adapter {"lora_name", "lora_path"}`` serves an adapter under a new id on top of
its (loaded on demand) base; ``POST /v1/unload_lora_adapter {"lora_name"}`` removes it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from slmops.serve.protocol import APIError, LoadLoraRequest, UnloadLoraRequest, not_found
from slmops.serve.service import Service

router = APIRouter(tags=["management"])


@router.api_route("/openai/load/{name:path}", methods=["GET", "POST"])
async def load(name: str, request: Request, ttl: float | None = Query(None, ge=0, description="Idle seconds before unloading")) -> dict[str, Any]:
    svc: Service = request.app.state.service
    if svc.catalog.restricted() and name not in svc.catalog.allowed():
        svc.catalog.extra.add(name)  # management may widen what is served
        try:
            target = svc.catalog.resolve(name)
        except APIError:
            svc.catalog.extra.discard(name)
            raise
    else:
        target = svc.catalog.resolve(name)
    entry = await svc.pool.acquire(target)
    svc.pool.release(entry)
    if ttl is not None:
        entry.ttl_s = ttl
    return {"model": name, "version": target.version, "loaded": True, "load_s": round(entry.load_s, 3), "ttl_s": entry.ttl_s}


@router.api_route("/openai/unload/{name:path}", methods=["GET", "POST"])
async def unload(name: str, request: Request, force: bool = Query(False, description="Cancel running requests")) -> dict[str, Any]:
    svc: Service = request.app.state.service
    entry = svc.pool.find(name)
    if entry is None:
        raise APIError(404, f"{name!r} is not loaded", param="name", code="model_not_loaded")
    busy = entry.active
    svc.pool.unload(entry, force=force)
    return {"model": name, "unloaded": True, "running_requests": busy, "forced": force}


@router.get("/openai/loadedmodels")
async def loaded_models(request: Request) -> list[str]:
    svc: Service = request.app.state.service
    out: list[str] = []
    for e in svc.pool.entries.values():
        out += sorted(e.ids) + sorted(e.adapters.values())
    return list(dict.fromkeys(out))


@router.post("/v1/load_lora_adapter")
async def load_lora_adapter(body: LoadLoraRequest, request: Request) -> dict[str, Any]:
    svc: Service = request.app.state.service
    target = svc.catalog.add_lora(body.lora_name, body.lora_path, body.base_model)
    try:
        entry = await svc.pool.acquire(target)
    except BaseException:
        svc.catalog.loras.pop(body.lora_name, None)
        raise
    svc.pool.release(entry)
    return {"lora_name": body.lora_name, "loaded": True, "base": entry.label}


@router.post("/v1/unload_lora_adapter")
async def unload_lora_adapter(body: UnloadLoraRequest, request: Request) -> dict[str, Any]:
    svc: Service = request.app.state.service
    if body.lora_name not in svc.catalog.loras:
        raise not_found(body.lora_name)
    svc.catalog.loras.pop(body.lora_name)
    await svc.pool.unload_adapter(f"lora-{body.lora_name}")
    return {"lora_name": body.lora_name, "unloaded": True}
