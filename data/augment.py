"""Training augmentations that move events and boxes together: horizontal flip and zoom-in crop.

Parameters are drawn once per recording pass (so a stream stays consistent in time) and applied to every window's
events and boxes of that pass by pure functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data.events import EVENT_DTYPE
from data.geometry import clip_boxes


@dataclass(frozen=True)
class AugmentParams:
    """One draw: flip or not, zoom factor (>= 1) and the zoom centre in input pixels."""

    flip: bool = False
    zoom: float = 1.0
    cx: float = 0.0
    cy: float = 0.0


@dataclass(frozen=True)
class Augmentation:
    """How to draw :class:`AugmentParams` (``flip_prob``; zoom in by up to ``max_zoom`` with ``zoom_prob``)."""

    flip_prob: float = 0.5
    zoom_prob: float = 0.5
    max_zoom: float = 1.5

    def __post_init__(self) -> None:
        if not (0 <= self.flip_prob <= 1 and 0 <= self.zoom_prob <= 1):
            raise ValueError("flip_prob and zoom_prob must lie in [0, 1]")
        if self.max_zoom < 1:
            raise ValueError(f"max_zoom must be >= 1, got {self.max_zoom}")

    def sample(self, rng: np.random.Generator, width: int, height: int) -> AugmentParams:
        """Draw parameters for an input of ``width`` × ``height``."""
        flip = bool(rng.random() < self.flip_prob)
        if rng.random() < self.zoom_prob and self.max_zoom > 1:
            zoom = float(rng.uniform(1.0, self.max_zoom))
            # the centre is chosen so that the zoomed view stays inside the frame
            half_w, half_h = width / (2 * zoom), height / (2 * zoom)
            cx, cy = float(rng.uniform(half_w, width - half_w)), float(rng.uniform(half_h, height - half_h))
            return AugmentParams(flip, zoom, cx, cy)
        return AugmentParams(flip, 1.0, width / 2, height / 2)


def augment_events(events: np.ndarray, params: AugmentParams, width: int, height: int) -> np.ndarray:
    """Events after zoom (about the centre, off-frame events dropped) and flip."""
    if not len(events) or (not params.flip and params.zoom == 1.0):
        return events
    x = events["x"].astype(np.float64)
    y = events["y"].astype(np.float64)
    if params.zoom != 1.0:
        x = np.floor((x + 0.5 - params.cx) * params.zoom + width / 2)
        y = np.floor((y + 0.5 - params.cy) * params.zoom + height / 2)
    if params.flip:
        x = width - 1 - x
    keep = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    out = np.empty(int(keep.sum()), dtype=EVENT_DTYPE)
    out["t"], out["p"], out["x"], out["y"] = events["t"][keep], events["p"][keep], x[keep], y[keep]
    return out


def augment_boxes(boxes: np.ndarray, params: AugmentParams, width: int, height: int) -> np.ndarray:
    """Boxes (label dtype) moved exactly as :func:`augment_events` moves events, clipped to the frame."""
    if not len(boxes) or (not params.flip and params.zoom == 1.0):
        return boxes
    out = boxes.copy()
    if params.zoom != 1.0:
        out["x"] = (boxes["x"] - params.cx) * params.zoom + width / 2
        out["y"] = (boxes["y"] - params.cy) * params.zoom + height / 2
        out["w"] = boxes["w"] * params.zoom
        out["h"] = boxes["h"] * params.zoom
    if params.flip:
        out["x"] = width - out["x"] - out["w"]
    return clip_boxes(out, width, height)
