"""``/docs`` (Swagger UI) and ``/redoc`` with their JavaScript and CSS served by this app, not by a CDN.

An edge box without internet shows the API docs too. The assets come from the ``fastapi-offline`` package (the
Swagger UI and ReDoc bundles, kept current by its maintainer); the pages are FastAPI's own, following its recipe for
self-hosting the docs' assets (the app is built with ``docs_url=None, redoc_url=None``).
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from service.errors import NotFoundError

router = APIRouter(tags=["docs"], include_in_schema=False)

ASSETS_URL = "/docs-assets"
ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
# The pages never reach out: ReDoc's bundle shows its maker's logo from their CDN, which this policy stops before any
# request is made (scripts and styles are the page's own and the local assets, as before).
NO_REMOTE_IMAGES = {"Content-Security-Policy": "img-src 'self' data: blob:"}
# Only these files are served: the package directory may hold others.
MEDIA_TYPES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}


def _root(request: Request) -> str:
    # Behind a proxy that mounts the app under a prefix, the pages must link below that prefix.
    return request.scope.get("root_path", "").rstrip("/")


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI over ``/openapi.json``, its assets served locally."""
    root, app = _root(request), request.app
    page = get_swagger_ui_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - Swagger UI",
        swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        swagger_ui_parameters=app.swagger_ui_parameters,
    )
    page.headers.update(NO_REMOTE_IMAGES)
    return page


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    """ReDoc over ``/openapi.json``, its script served locally (no web fonts: they would come from the internet)."""
    root, app = _root(request), request.app
    page = get_redoc_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - ReDoc",
        redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        with_google_fonts=False,
    )
    page.headers.update(NO_REMOTE_IMAGES)
    return page


@router.get(ASSETS_URL + "/{name}")
def asset(name: str) -> FileResponse:
    """One of the docs' JavaScript, CSS or icon files."""
    if name not in MEDIA_TYPES:
        raise NotFoundError(f"no docs asset {name!r}; the assets are {sorted(MEDIA_TYPES)}")
    return FileResponse(ASSETS / name, media_type=MEDIA_TYPES[name])
