"""``GET /healthz``: liveness (never behind the API key)."""

from __future__ import annotations

from fastapi import APIRouter

from service.dependencies import SessionsDep
from service.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness")
def healthz(sessions: SessionsDep) -> dict[str, object]:
    """The server is up and its model is loaded (the app only starts once it is)."""
    return {"status": "ok", "model_loaded": True, "active_sessions": len(sessions)}
