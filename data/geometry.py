"""Mapping between a sensor's pixel grid and the model's input grid (scale + letterbox), for events and boxes.

A recording from a 1280×720 or 640×480 camera is shrunk to fit the model's input (e.g. 304×240) with its aspect ratio
kept and centred; a model trained at half resolution maps Gen1's 304×240 to 152×120. Boxes predicted in input
coordinates are mapped back to the recording's own coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data.events import EVENT_DTYPE


@dataclass(frozen=True)
class Letterbox:
    """``input = sensor · scale + offset`` for x and y; events that fall off the input grid are dropped."""

    sensor_width: int
    sensor_height: int
    input_width: int
    input_height: int

    @property
    def scale(self) -> float:
        """The single scale factor applied to both axes."""
        return min(self.input_width / self.sensor_width, self.input_height / self.sensor_height)

    @property
    def offset(self) -> tuple[float, float]:
        """(x, y) offset in input pixels that centres the scaled sensor."""
        s = self.scale
        return (self.input_width - self.sensor_width * s) / 2, (self.input_height - self.sensor_height * s) / 2

    @property
    def is_identity(self) -> bool:
        """True when sensor and input grids coincide."""
        return (self.sensor_width, self.sensor_height) == (self.input_width, self.input_height)

    def map_events(self, events: np.ndarray) -> np.ndarray:
        """Events in input coordinates (pixel centres mapped, then floored)."""
        if self.is_identity or not len(events):
            return events
        s = self.scale
        ox, oy = self.offset
        x = np.floor((events["x"] + 0.5) * s + ox).astype(np.int64)
        y = np.floor((events["y"] + 0.5) * s + oy).astype(np.int64)
        keep = (x >= 0) & (x < self.input_width) & (y >= 0) & (y < self.input_height)
        out = np.empty(int(keep.sum()), dtype=EVENT_DTYPE)
        out["t"], out["p"] = events["t"][keep], events["p"][keep]
        out["x"], out["y"] = x[keep], y[keep]
        return out

    def boxes_to_input(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes (label dtype) from sensor to input coordinates."""
        return self._affine(boxes, self.scale, *self.offset)

    def boxes_to_sensor(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes (label dtype) from input back to sensor coordinates, clipped to the sensor."""
        s = self.scale
        ox, oy = self.offset
        out = self._affine(boxes, 1 / s, -ox / s, -oy / s)
        return clip_boxes(out, self.sensor_width, self.sensor_height)

    @staticmethod
    def _affine(boxes: np.ndarray, s: float, ox: float, oy: float) -> np.ndarray:
        out = boxes.copy()
        out["x"] = boxes["x"] * s + ox
        out["y"] = boxes["y"] * s + oy
        out["w"] = boxes["w"] * s
        out["h"] = boxes["h"] * s
        return out


def clip_boxes(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """Boxes clipped to ``[0, width] × [0, height]``; boxes left with no area are dropped."""
    x0 = np.clip(boxes["x"], 0, width)
    y0 = np.clip(boxes["y"], 0, height)
    x1 = np.clip(boxes["x"] + boxes["w"], 0, width)
    y1 = np.clip(boxes["y"] + boxes["h"], 0, height)
    out = boxes.copy()
    out["x"], out["y"], out["w"], out["h"] = x0, y0, x1 - x0, y1 - y0
    return out[(out["w"] > 0) & (out["h"] > 0)]
