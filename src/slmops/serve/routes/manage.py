"""Model management the way users know it: Foundry Local's ``/openai/load|unload|loadedmodels`` and vLLM's LoRA routes.

``POST /openai/load/{name}?ttl=SECONDS`` loads a model (and adds it to what is served),
``POST /openai/unload/{name}?force=true`` unloads it (``force`` cancels its running requests, which end
with a ``model_unloaded`` error), ``GET`` on either is 405: a state change is never a GET, which any web
page can make a browser send (Foundry Local answers GET there; clients that rely on it must POST),
``GET /openai/loadedmodels`` lists the ids of loaded models and adapters.
``POST /v1/load_lora_adapter {"lora_name", "lora_path", "base_model"?}`` serves an adapter (PEFT, GGUF LoRA
or ONNX Runtime adapter; see :mod:`slmops.serve.adapters`) under a new id on top of its base, loaded on
demand; ``POST /v1/unload_lora_adapter {"lora_name"}`` removes it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from slmops.serve.protocol import APIError, LoadLoraRequest, UnloadLoraRequest, model_id, not_found
from slmops.serve.service import Service

router = APIRouter(tags=["management"])


def checked(name: str) -> str:
    """400 for a model id that is not one (surrounding whitespace, control characters, an impossible version)."""
    try:
        return model_id(name)
    except ValueError as exc:
        raise APIError(400, f"name: {exc}", param="name", code="invalid_value") from None


@router.post("/openai/load/{name:path}", operation_id="load_model")
async def load(name: str, request: Request, ttl: float | None = Query(None, ge=0, description="Idle seconds before unloading")) -> dict[str, Any]:
    svc: Service = request.app.state.service
    checked(name)
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


@router.post("/openai/unload/{name:path}", operation_id="unload_model")
async def unload(name: str, request: Request, force: bool = Query(False, description="Cancel running requests")) -> dict[str, Any]:
    svc: Service = request.app.state.service
    checked(name)
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
    fmt = svc.catalog.loras[body.lora_name].source.fmt
    try:
        entry = await svc.pool.acquire(target)
    except APIError as exc:
        svc.catalog.loras.pop(body.lora_name, None)
        if exc.code == "invalid_lora":  # the runtime refused the adapter itself
            raise APIError(exc.status, exc.message, param="lora_path", code=exc.code) from exc
        raise
    except BaseException:
        svc.catalog.loras.pop(body.lora_name, None)
        raise
    svc.pool.release(entry)
    return {"lora_name": body.lora_name, "loaded": True, "base": entry.label, "format": fmt}


@router.post("/v1/unload_lora_adapter")
async def unload_lora_adapter(body: UnloadLoraRequest, request: Request) -> dict[str, Any]:
    svc: Service = request.app.state.service
    if body.lora_name not in svc.catalog.loras:
        raise not_found(body.lora_name)
    svc.catalog.loras.pop(body.lora_name)
    await svc.pool.unload_adapter(f"lora-{body.lora_name}")
    return {"lora_name": body.lora_name, "unloaded": True}
