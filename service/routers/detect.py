"""``POST /v1/detect``: stateless detection over the events of one request (a fresh state each time)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import IO, Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from data.formats.dat import DAT_RECORD
from data.formats.recording import header_geometry, open_recording
from service.codecs import UPLOAD_SUFFIXES, decode_columns, decode_records
from service.dependencies import EngineDep, SettingsDep, require_api_key
from service.errors import InvalidRequestError, MalformedPayloadError, PayloadTooLargeError, UnsupportedMediaTypeError
from service.inference import DetectionEngine
from service.schemas import DetectResponse, ErrorResponse, EventColumns
from service.settings import Settings

router = APIRouter(prefix="/v1", tags=["detect"], dependencies=[Depends(require_api_key)])

OCTET, JSON, MULTIPART = "application/octet-stream", "application/json", "multipart/form-data"
_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "description": (
        "The events, in one of three forms (pick by `Content-Type`):\n\n"
        f"* `{OCTET}`: little-endian DAT Event2D records, 8 bytes each: uint32 `t` (µs), uint32 "
        "`x | y << 14 | p << 28` — the payload of a Prophesee `.dat` file without its header.\n"
        f"* `{JSON}`: columns `{{\"t\": [...], \"x\": [...], \"y\": [...], \"p\": [...]}}` (small requests).\n"
        f"* `{MULTIPART}`: a field `file` holding a `.dat` or `.raw` (EVT 2.0/3.0) recording; its header gives the "
        "sensor size unless `width`/`height` are given.\n\n"
        "Without `width`/`height` (and without a header that names the sensor size) the events are taken to come from "
        "the sensor the model was trained for (`sensor_width` × `sensor_height` in `GET /v1/model`).\n\n"
        "Timestamps must be non-negative and non-decreasing; coordinates must lie on the sensor."
    ),
    "content": {
        OCTET: {"schema": {"type": "string", "format": "binary"}},
        JSON: {
            "schema": EventColumns.model_json_schema(),
            "examples": {"three events": {"value": {"t": [1000, 1500, 52000], "x": [10, 11, 200],
                                                    "y": [20, 20, 100], "p": [1, 0, 1]}}},
        },
        MULTIPART: {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary", "description": ".dat or .raw file"}},
                "required": ["file"],
            }
        },
    },
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "malformed body (bad JSON, truncated records, broken form)"},
    401: {"model": ErrorResponse, "description": "missing or wrong API key"},
    413: {"model": ErrorResponse, "description": "body or event count over the server's limits"},
    415: {"model": ErrorResponse, "description": "content type other than the three accepted"},
    422: {"model": ErrorResponse, "description": "invalid events or parameters (off the sensor, unsorted, ...)"},
}


@router.post(
    "/detect",
    response_model=DetectResponse,
    summary="Detect objects in a batch of events",
    openapi_extra={"requestBody": _REQUEST_BODY},
    responses=_ERRORS,
)
async def detect(
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    width: Annotated[int | None, Query(ge=1, le=16384, description="sensor width (default: the uploaded file's "
                                       "header, else the sensor the model was trained for)")] = None,
    height: Annotated[int | None, Query(ge=1, le=16384, description="sensor height (same defaults as width)")] = None,
    score_threshold: Annotated[float | None, Query(ge=0, le=1, description="minimum score (default: the server's "
                                                   "setting)")] = None,
) -> dict[str, Any]:
    """Cut the events into windows of Δ aligned to multiples of Δ (as `/v1/stream` and `spquant predict` do) and
    return every window's detections, from the window holding the first event to the one holding the last."""
    if (width is None) != (height is None):
        raise InvalidRequestError("give both width and height, or neither")
    threshold = settings.score_threshold if score_threshold is None else score_threshold
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == MULTIPART:
        async with request.form(max_files=1, max_fields=1) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise MalformedPayloadError("the multipart form needs a file field 'file' (a .dat or .raw recording)")
            width, height, n, windows = await engine.call(
                _detect_file, engine, settings, upload.file, upload.filename or "", width, height, threshold
            )
    elif media_type in (OCTET, JSON):
        body = await request.body()
        if media_type == OCTET:
            if len(body) // DAT_RECORD.itemsize > settings.max_events_per_request:
                raise PayloadTooLargeError(f"{len(body) // DAT_RECORD.itemsize} events in one request; the limit "
                                           f"is {settings.max_events_per_request}")
            events = decode_records(body)
        else:
            try:
                events = await engine.call(decode_columns, body)  # pydantic over long lists: off the loop
            except ValidationError as exc:
                raise RequestValidationError(
                    [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_context=False)]
                ) from None
        if width is None or height is None:
            width, height = engine.sensor_size
        detector = engine.detector(width, height, threshold)
        n, windows = await engine.call(
            engine.detect, detector, [events], settings.max_events_per_request, settings.max_windows,
            settings.denoise_us,
        )
    else:
        raise UnsupportedMediaTypeError(
            f"content type {media_type or '(none)'!r} is not accepted; send {OCTET} (DAT records), {JSON} (columns) "
            f"or {MULTIPART} (a file field 'file')"
        )
    return {"width": width, "height": height, "window_us": engine.window_us, "events": n, "windows": windows}


def _detect_file(
    engine: DetectionEngine, settings: Settings, file: IO[bytes], filename: str, width: int | None,
    height: int | None, threshold: float,
) -> tuple[int, int, int, list[dict[str, Any]]]:
    # Blocking: copy the upload to a file the readers can memory-map, then stream it through the detector.
    with tempfile.TemporaryDirectory(prefix="spquant-upload-") as tmp:
        suffix = Path(filename).suffix.lower()
        path = Path(tmp) / f"upload{suffix if suffix in UPLOAD_SUFFIXES else ''}"
        with open(path, "wb") as out:
            shutil.copyfileobj(file, out)
        recording = open_recording(path, width, height)
        if width is None and header_geometry(recording) is None:  # no size stated: the model's training sensor
            recording = open_recording(path, *engine.sensor_size)
        detector = engine.detector(recording.width, recording.height, threshold)
        n, windows = engine.detect(detector, recording.iter_chunks(), settings.max_events_per_request,
                                   settings.max_windows, settings.denoise_us)
        return recording.width, recording.height, n, windows
