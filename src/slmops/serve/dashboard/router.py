"""The dashboard routes and the JSON they poll, built from the Prometheus registry and the request log.

Versions are shown as ``name:version`` wherever the registry has a name for the artifact (an
unnamed one logged as ``sha256:…`` is renamed once it is named); a logged chat prompt is shown from
its first user turn (the system prompt, the same on every request, is left out of the column).
"""

from __future__ import annotations

import json
import time
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from slmops.monitor.requestlog import query

router = APIRouter(tags=["ops"])
OPEN_PATHS = frozenset({"/dashboard", "/dashboard/app.js", "/dashboard/app.css"})
_TYPES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
WINDOW_S = 300.0


def _asset(name: str) -> Response:
    body = resources.files("slmops.serve.dashboard").joinpath("static", name).read_bytes()
    return Response(body, media_type=_TYPES[name], headers={"cache-control": "no-cache"})


@router.get("/dashboard", include_in_schema=False)
def page() -> Response:
    return _asset("index.html")


@router.get("/dashboard/app.js", include_in_schema=False)
def script() -> Response:
    return _asset("app.js")


@router.get("/dashboard/app.css", include_in_schema=False)
def style() -> Response:
    return _asset("app.css")


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def _memory(runtime: Any) -> int | None:
    mem = getattr(runtime, "memory_bytes", None)
    if isinstance(mem, int):
        return mem
    model = getattr(runtime, "model", None)
    try:
        return int(sum(p.numel() * p.element_size() for p in model.parameters())) if model is not None else None
    except Exception:  # noqa: BLE001 - a runtime without torch parameters
        return None


def prompt_preview(prompt: str | None) -> str | None:
    """The logged prompt as the dashboard shows it: a chat's turns from the first non-system one, as ``role: text`` lines."""
    if not prompt or not prompt.startswith("["):
        return prompt
    try:
        messages = json.loads(prompt)
    except ValueError:
        return prompt
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return prompt
    turns = [m for m in messages if m.get("role") != "system"] or messages
    if len(turns) == 1:
        return _content_text(turns[0].get("content"))
    return "\n".join(f"{m.get('role')}: {_content_text(m.get('content'))}" for m in turns)


def _content_text(content: Any) -> str:
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


class _Names:
    """``sha256:…`` → ``name:version`` from the registry (asked once per digest per page load)."""

    def __init__(self, catalog: Any) -> None:
        self.catalog, self.cache = catalog, {}

    def version(self, label: str | None, digest: str | None = None) -> str | None:
        if not label or not label.startswith("sha256:"):
            return label
        key = digest or label[7:]
        if key not in self.cache:
            self.cache[key] = self.catalog.name_of(key)
        return self.cache[key] or label


def _prometheus(registry: Any) -> dict[str, Any]:
    """Totals per (model, version) and queue gauges per model, read from the registry."""
    totals: dict[tuple[str, str], dict[str, float]] = {}
    gauges: dict[str, dict[str, float]] = {}
    drift: dict[str, float] = {}
    quality: dict[str, float] = {}  # by version: a canary's versions are scored apart
    for fam in registry.collect():
        for s in fam.samples:
            lb = s.labels
            if s.name == "slmops_requests_total" and lb.get("model"):
                t = totals.setdefault((lb["model"], lb["version"]), {"requests": 0, "errors": 0})
                t["requests"] += s.value
                if not lb["status"].startswith("2"):
                    t["errors"] += s.value
            elif s.name in ("slmops_queue_depth", "slmops_running_requests"):
                gauges.setdefault(lb["model"], {})[s.name.removeprefix("slmops_")] = s.value
            elif s.name == "slmops_drift_score":
                drift[lb["model"]] = s.value
            elif s.name == "slmops_quality_score":
                quality[lb["version"]] = s.value
    return {"totals": totals, "gauges": gauges, "drift": drift, "quality": quality}


def dashboard_data(app: Any, *, now: float | None = None, window_s: float = WINDOW_S) -> dict[str, Any]:
    """Everything the page shows, as one JSON-ready dict."""
    now = now or time.time()
    svc = app.state.service
    svc.refresh_gauges()
    prom = _prometheus(svc.metrics.registry)
    rows = query(svc.requestlog.path, since=now - window_s, limit=5000) if svc.requestlog is not None else []
    names = _Names(svc.catalog)
    for r in rows:
        r["version"] = names.version(r["version"], r.get("digest"))
    totals: dict[tuple[str, str], dict[str, int]] = {}
    for (model, version), t in prom["totals"].items():
        into = totals.setdefault((model, names.version(version) or version), {"requests": 0, "errors": 0})
        into["requests"] += t["requests"]
        into["errors"] += t["errors"]
    prom["totals"] = totals
    prom["quality"] = {names.version(v) or v: q for v, q in prom["quality"].items()}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r["model"]:
            groups.setdefault((r["model"], r["version"] or ""), []).append(r)
    keys = sorted(set(groups) | set(prom["totals"]))
    models = []
    for model, version in keys:
        rs = groups.get((model, version), [])
        ok = [r for r in rs if r["status"] == 200]
        lat = [r["latency_s"] for r in ok if r["latency_s"] is not None]
        ttft = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
        span = max(1.0, min(window_s, now - min((r["ts"] for r in rs), default=now)))
        tot = prom["totals"].get((model, version), {"requests": 0, "errors": 0})
        g = prom["gauges"].get(model, {})
        models.append({
            "model": model, "version": version, "requests_total": tot["requests"], "errors_total": tot["errors"],
            "requests_per_s": len(rs) / span, "tokens_per_s": sum(r["completion_tokens"] or 0 for r in ok) / span,
            "errors_window": sum(r["status"] != 200 for r in rs),
            "latency_p50": _pct(lat, 0.5), "latency_p95": _pct(lat, 0.95), "latency_p99": _pct(lat, 0.99),
            "ttft_p50": _pct(ttft, 0.5), "ttft_p95": _pct(ttft, 0.95),
            "queue_depth": g.get("queue_depth", 0), "running": g.get("running_requests", 0), "drift": prom["drift"].get(model),
            "quality": prom["quality"].get(version),
        })
    # a per-10s timeline of requests and latency for the charts
    buckets = 30
    step = window_s / buckets
    timeline = [{"t": now - window_s + (i + 1) * step, "requests": 0, "latency": 0.0, "tokens": 0} for i in range(buckets)]
    for r in rows:
        i = min(buckets - 1, max(0, int((r["ts"] - (now - window_s)) // step)))
        timeline[i]["requests"] += 1
        timeline[i]["latency"] = max(timeline[i]["latency"], r["latency_s"] or 0.0)
        timeline[i]["tokens"] += r["completion_tokens"] or 0
    loaded = [{"label": names.version(e.label, e.key), "runtime": e.runtime.name, "adapters": sorted(e.adapters.values()),
               "memory_bytes": _memory(e.runtime), "loaded_at": e.loaded_at, "active": e.active}
              for e in list(svc.pool.entries.values())]
    latest = [{**{k: r.get(k) for k in ("time", "model", "version", "route", "status", "prompt_tokens", "completion_tokens",
                                         "ttft_s", "latency_s", "completion")}, "prompt": prompt_preview(r.get("prompt"))} for r in rows[:20]]
    return {"now": now, "window_s": window_s, "models": models, "timeline": timeline, "loaded": loaded, "latest": latest,
            "content_logged": bool(svc.requestlog and svc.requestlog.log_content)}


@router.get("/dashboard/data", include_in_schema=False)
def data(request: Request) -> JSONResponse:
    return JSONResponse(dashboard_data(request.app))
