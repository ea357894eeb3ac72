"""The app factory: ``create_app(settings)``; the lifespan loads the model once and stops the workers at exit.

Run it with ``spquant serve`` or ``uvicorn --factory service.main:create_app`` (settings from ``SPQUANT_*``).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from threadpoolctl import ThreadpoolController

from data.errors import EventDataError
from models.inference.loading import default_model, load_model, runtime_name
from models.inference.spq import is_spq
from service.errors import ServiceError
from service.inference import DetectionEngine
from service.metrics import Metrics
from service.middleware import BodyLimitMiddleware, MetricsMiddleware
from service.routers import demo, detect, docs, health, metrics, model, stream
from service.sessions import SessionRegistry
from service.settings import Settings

DESCRIPTION = """Object detection (cars, pedestrians) on event-camera data with a quantized spiking network.

* `POST /v1/detect`: a batch of events (DAT records, JSON columns or a `.dat`/`.raw` upload) → detections per window.
* `WS /v1/stream`: a live stream; one detection message per window, state kept per session.
* `GET /`: a demo page that plays a recording through the stream.

Windows are `[kΔ, (k+1)Δ)` in the recording's time base, the same in every entry point. Licensed AGPL-3.0-or-later:
the source of this service is available to its users.
"""


def serving_model(settings: Settings) -> tuple[Path, str]:
    """The model file the service loads and the engine that runs it: ``settings.runtime`` as set, where ``auto``
    serves an exported model (and the bundled one, as its export) on the numpy engine, which serves more streams per
    core than the torch runtime (``benchmarks/service_load.py``), and a checkpoint on torch, which it needs (so does
    the fake-quant model that ``integer=False`` asks for)."""
    if settings.runtime != "auto" or not settings.integer:
        return settings.model or default_model(settings.runtime), settings.runtime
    path = settings.model or default_model("numpy")
    return path, "numpy" if path.is_file() and is_spq(path) else "auto"


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app for ``settings`` (default: from the environment). The model loads when the app starts."""
    settings = settings or Settings.from_env()
    app_metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        path, runtime = serving_model(settings)
        detector = await asyncio.to_thread(load_model, path, settings.integer, runtime)
        # torch is loaded only where a torch model serves (never imported here: the numpy engine needs none of it)
        torch = sys.modules.get("torch")
        torch_threads = torch.get_num_threads() if torch is not None else None
        if torch is not None:
            torch.set_num_threads(settings.torch_threads)
        processes = settings.processes
        if processes is None:
            processes = runtime_name(detector) == "numpy" and (os.cpu_count() or 1) > 1
        app.state.engine = await asyncio.to_thread(
            DetectionEngine, detector, path, settings.threads, app_metrics, settings.max_batch,
            (settings.integer, runtime) if processes else None)
        await app.state.engine.call(app.state.engine.warm_up)
        # One BLAS thread per call for the server's life: concurrency comes from the worker threads, and the numpy
        # engine's own per-call cap, entered and left by two workers at once, would restore a multi-threaded BLAS
        # under the other one's GEMMs.
        blas = ThreadpoolController().limit(limits=1, user_api="blas")
        try:
            yield
        finally:
            app.state.engine.close()
            blas.restore_original_limits()
            if torch is not None and torch_threads is not None:
                torch.set_num_threads(torch_threads)

    # docs_url/redoc_url None: service.routers.docs serves both pages with local assets (FastAPI's default pages load
    # them from a CDN, blank on an offline edge box).
    app = FastAPI(title="spquant detection service", description=DESCRIPTION, version="0.1.0", lifespan=lifespan,
                  license_info={"name": "AGPL-3.0-or-later", "identifier": "AGPL-3.0-or-later"},
                  docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.metrics = app_metrics
    app.state.sessions = SessionRegistry(settings.max_sessions, app_metrics)
    for module in (health, model, detect, stream, metrics, demo, docs):
        app.include_router(module.router)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(EventDataError, _event_data_error)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app_metrics)
    return app


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)


async def _event_data_error(_: Request, exc: Exception) -> JSONResponse:
    # Invalid events or recordings (off the sensor, unsorted, foreign files): the client's data, so 422.
    return JSONResponse({"detail": str(exc)}, status_code=422)
