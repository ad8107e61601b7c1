"""``GET /v1/models`` (what is served), ``GET /v1/models/{id}``, ``GET /health`` and ``GET /metrics``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from slmops.serve.protocol import APIError, model_card, not_found
from slmops.serve.protocol import model_id as valid_id
from slmops.serve.service import Service

router = APIRouter()


def _card(svc: Service, model_id: str) -> dict[str, Any]:
    loaded = svc.pool.find(model_id)
    return model_card(model_id, created=int(loaded.loaded_at) if loaded else 0, loaded=loaded is not None)


@router.get("/v1/models", tags=["openai"])
async def list_models(request: Request) -> dict[str, Any]:
    svc: Service = request.app.state.service
    return {"object": "list", "data": [_card(svc, m) for m in svc.catalog.list_ids()]}


@router.get("/v1/models/{model_id:path}", tags=["openai"])
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    svc: Service = request.app.state.service
    try:
        valid_id(model_id)
    except ValueError:
        raise not_found(model_id) from None  # "bot " is not another name of bot
    try:
        t = svc.catalog.resolve(model_id)
    except APIError as exc:
        if exc.status == 404:
            raise
        raise not_found(model_id) from None
    return {**_card(svc, model_id), "version": t.version, "digest": t.digest, "adapter": t.adapter is not None}


@router.get("/health", tags=["ops"])
async def health(request: Request) -> dict[str, Any]:
    svc: Service = request.app.state.service
    return {"status": "ok", "loaded": len(svc.pool.entries)}


@router.get("/metrics", tags=["ops"], response_class=Response)
async def metrics(request: Request) -> Response:
    svc: Service = request.app.state.service
    svc.refresh_gauges()
    body, ctype = svc.metrics.render()
    return Response(body, media_type=ctype)
