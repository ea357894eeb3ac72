"""Wire formats: pydantic models (with the examples the OpenAPI docs show) and the one detection serialiser."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

_DETECTION_EXAMPLE = {"x": 112.5, "y": 80.0, "w": 48.25, "h": 30.5, "class_id": 0, "class_name": "car", "score": 0.91}


class Detection(BaseModel):
    """One box in the recording's pixel coordinates (top-left corner, width, height)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_DETECTION_EXAMPLE]})

    x: float
    y: float
    w: float
    h: float
    class_id: int
    class_name: str
    score: float = Field(description="class confidence in [0, 1]")


class WindowDetections(BaseModel):
    """The detections of one window ``[t_start, t_end)`` (µs); windows are aligned to multiples of Δ."""

    t_start: int
    t_end: int
    detections: list[Detection]


class DetectResponse(BaseModel):
    """Every window from the one holding the first event to the one holding the last, in order (empty ones too)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "width": 304,
                    "height": 240,
                    "window_us": 50000,
                    "events": 3,
                    "windows": [
                        {"t_start": 0, "t_end": 50000, "detections": [_DETECTION_EXAMPLE]},
                        {"t_start": 50000, "t_end": 100000, "detections": []},
                    ],
                }
            ]
        }
    )

    width: int = Field(description="sensor width the coordinates refer to")
    height: int = Field(description="sensor height the coordinates refer to")
    window_us: int = Field(description="window length Δ in µs (fixed by the model)")
    events: int = Field(description="number of events received")
    windows: list[WindowDetections]


class EventColumns(BaseModel):
    """Events as four equally long columns: ``t`` µs (non-decreasing, >= 0), ``x``, ``y`` pixels, ``p`` in {0, 1}."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={"examples": [{"t": [1000, 1500, 52000], "x": [10, 11, 200], "y": [20, 20, 100],
                                         "p": [1, 0, 1]}]},
    )

    t: list[Annotated[int, Field(ge=0, le=2**63 - 1)]]
    x: list[Annotated[int, Field(ge=0, le=65535)]]
    y: list[Annotated[int, Field(ge=0, le=65535)]]
    p: list[Annotated[int, Field(ge=0, le=1)]]


class Health(BaseModel):
    """Liveness and readiness."""

    status: str = Field(examples=["ok"])
    model_loaded: bool
    active_sessions: int


class ModelInfo(BaseModel):
    """The loaded detector: what it detects, its input and its sizes."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "path": "models/weights/spquant-n.pt",
                    "runtime": "integer",
                    "variant": "spquant",
                    "scale": "n",
                    "classes": ["car", "pedestrian"],
                    "time_bins": 5,
                    "window_us": 50000,
                    "input_width": 152,
                    "input_height": 120,
                    "sensor_width": 304,
                    "sensor_height": 240,
                    "weight_bits": 4,
                    "first_layer_bits": 8,
                    "membrane_levels": [-1.0, 0.0, 1.0],
                    "conv_layers": 40,
                    "channels": 2048,
                    "params": 1200000,
                    "weight_bytes": 650000,
                    "state_bytes_per_stream": 480000,
                }
            ]
        }
    )

    path: str
    runtime: Literal["integer", "numpy", "pytorch"] = Field(
        description="integer: the exported integer runtime in PyTorch (int8 membranes); numpy: the same integer "
                    "model on the torch-free engine (numpy + numba); pytorch: the checkpoint's own model"
    )
    variant: str
    scale: str
    classes: list[str]
    time_bins: int = Field(description="SNN time steps T per window")
    window_us: int = Field(description="window length Δ in µs")
    input_width: int = Field(description="network input width (events are letterboxed into it)")
    input_height: int = Field(description="network input height")
    sensor_width: int = Field(description="width of the sensor the model was trained for: the default sensor of "
                              "requests and streams that name none")
    sensor_height: int = Field(description="height of that sensor")
    weight_bits: int
    first_layer_bits: int
    membrane_levels: list[float] = Field(description="stored membrane levels, in units of the threshold")
    conv_layers: int
    channels: int = Field(description="output channels over all conv layers (what pruning kept)")
    params: int
    weight_bytes: int = Field(description="weights at their quantized bit widths (other tensors at 32 bit)")
    state_bytes_per_stream: int = Field(description="membrane state one stream holds, as stored")


class ErrorResponse(BaseModel):
    """Why a request was refused."""

    detail: Any = Field(examples=["event 12 has x=400, outside a sensor of 304x240"])


def detections_json(boxes: np.ndarray, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Label-dtype boxes as :class:`Detection` dicts (the one serialiser of REST and stream replies)."""
    return [
        {"x": x, "y": y, "w": w, "h": h, "class_id": c, "class_name": class_names[c], "score": s}
        for x, y, w, h, c, s in zip(
            boxes["x"].tolist(), boxes["y"].tolist(), boxes["w"].tolist(), boxes["h"].tolist(),
            boxes["class_id"].tolist(), boxes["class_confidence"].tolist(), strict=True,
        )
    ]


def window_json(t_start: int, t_end: int, boxes: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """One :class:`WindowDetections` dict."""
    return {"t_start": t_start, "t_end": t_end, "detections": detections_json(boxes, class_names)}
