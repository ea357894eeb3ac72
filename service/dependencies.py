"""Shared objects for the routes (settings, engine, sessions, metrics) and the API-key check."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader
from starlette.requests import HTTPConnection

from service.errors import UnauthorizedError
from service.inference import DetectionEngine
from service.metrics import Metrics
from service.sessions import SessionRegistry
from service.settings import Settings

API_KEY_HEADER = "X-API-Key"
_api_key_header = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="needed on every route but /healthz when the server has a key"
)


def get_settings(connection: HTTPConnection) -> Settings:
    """The app's settings."""
    return connection.app.state.settings


def get_engine(connection: HTTPConnection) -> DetectionEngine:
    """The loaded detector (set up by the lifespan)."""
    return connection.app.state.engine


def get_sessions(connection: HTTPConnection) -> SessionRegistry:
    """The registry of open stream sessions."""
    return connection.app.state.sessions


def get_metrics(connection: HTTPConnection) -> Metrics:
    """The app's Prometheus metrics."""
    return connection.app.state.metrics


def api_key_ok(settings: Settings, supplied: str | None) -> bool:
    """True when the server needs no key or ``supplied`` is it (constant-time comparison)."""
    if settings.api_key is None:
        return True
    return supplied is not None and secrets.compare_digest(supplied.encode(), settings.api_key.encode())


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[DetectionEngine, Depends(get_engine)]
SessionsDep = Annotated[SessionRegistry, Depends(get_sessions)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def require_api_key(settings: SettingsDep, supplied: Annotated[str | None, Security(_api_key_header)]) -> None:
    """Refuse the request with 401 unless it carries the configured API key."""
    if not api_key_ok(settings, supplied):
        raise UnauthorizedError(f"missing or wrong API key (send it in the {API_KEY_HEADER} header)")
