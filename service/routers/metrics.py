"""``GET /metrics``: Prometheus text exposition."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.dependencies import MetricsDep, require_api_key

router = APIRouter(tags=["metrics"], dependencies=[Depends(require_api_key)])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(registry: MetricsDep) -> Response:
    """Requests, windows, per-window inference latency, stream latency and active sessions."""
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
