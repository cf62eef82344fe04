"""`GET /metrics`: Prometheus's text format (docs/observability.md).

It does its own authentication: by default any valid token (reader or more) may scrape, as the numbers
name the subscriptions, groups and sets; `scaleset serve --metrics-public` opens it to scrapers that
carry no token, for a network where only trusted hosts reach the port.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from scaleset.api.deps import authorize
from scaleset.observability.metrics import Metrics

router = APIRouter(include_in_schema=False)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    # A plain (not async) handler: the store's queries block, so FastAPI runs it on its thread pool.
    if not getattr(request.app.state, "metrics_public", False):
        authorize(request, "reader")
    found: Metrics = request.app.state.metrics
    body, content_type = found.exposition(request.headers.get("accept", ""))
    return Response(content=body, media_type=content_type)
