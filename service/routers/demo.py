"""The demo page (``GET /``), its script and the bundled sample recording it plays by default."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

import data

router = APIRouter(tags=["demo"], include_in_schema=False)

STATIC = Path(__file__).resolve().parents[1] / "static"
SAMPLE = Path(data.__file__).resolve().parent / "samples" / "street_td.dat"


@router.get("/")
def index() -> FileResponse:
    """The demo page: plays a recording through ``/v1/stream`` and draws events and boxes live."""
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/demo.js")
def script() -> FileResponse:
    """The demo page's script."""
    return FileResponse(STATIC / "demo.js", media_type="text/javascript")


@router.get("/demo/sample.dat")
def sample() -> FileResponse:
    """The bundled synthetic recording (Gen1 DAT)."""
    return FileResponse(SAMPLE, media_type="application/octet-stream", filename=SAMPLE.name)
