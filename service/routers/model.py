"""``GET /v1/model``: what the loaded detector is."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from service.dependencies import EngineDep, require_api_key
from service.schemas import ErrorResponse, ModelInfo

router = APIRouter(prefix="/v1", tags=["model"], dependencies=[Depends(require_api_key)])


@router.get("/model", response_model=ModelInfo, summary="The loaded detector",
            responses={401: {"model": ErrorResponse}})
def model_info(engine: EngineDep) -> dict[str, Any]:
    """Classes, time bins T, window Δ, bit widths, channels, parameters, weight bytes and per-stream state bytes."""
    return engine.info()
