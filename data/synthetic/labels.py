"""Ground-truth boxes for a synthetic scene, as a human labeller would draw them, in the Gen1 label dtype.

At each label time every object in view gets its tight box clipped to the frame. Objects entirely outside, mostly
outside, or mostly hidden behind nearer objects are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data.formats.labels import BBOX_DTYPE, make_boxes
from data.synthetic.scene import Placement, StreetScene


@dataclass(frozen=True)
class LabelConfig:
    """When boxes are written and which objects a labeller would skip."""

    rate_hz: float = 20.0  # Gen1 itself is labelled at about 4 Hz
    min_visible: float = 0.3  # fraction of an object's in-frame pixels not hidden by nearer objects
    min_in_frame: float = 0.15  # fraction of an object's pixels inside the frame
    min_side_px: float = 2.0  # clipped boxes thinner than this are dropped


def label_times(duration_us: float, rate_hz: float) -> np.ndarray:
    """Label timestamps (µs, int64): every ``1/rate_hz`` s after 0, up to ``duration_us`` inclusive."""
    period = 1e6 / rate_hz
    return np.round(np.arange(1, math.floor(duration_us / period + 1e-9) + 1) * period).astype(np.int64)


def boxes_at(placements: list[Placement], t: int, width: int, height: int, config: LabelConfig) -> np.ndarray:
    """Boxes for objects placed as in ``placements`` (farthest first) at time ``t``: :data:`BBOX_DTYPE`."""
    owner = np.full((height, width), -1, np.int32)  # which placement covers each pixel after occlusion
    in_frame = np.zeros(len(placements), np.int64)
    total = np.zeros(len(placements), np.int64)
    for i, p in enumerate(placements):
        mask = p.track.sprite.alpha[p.pose()] > 0.5
        total[i] = np.count_nonzero(mask)
        x, y = round(p.x), round(p.y)
        y0, y1 = max(y, 0), min(y + mask.shape[0], height)
        x0, x1 = max(x, 0), min(x + mask.shape[1], width)
        if y0 >= y1 or x0 >= x1:
            continue
        part = mask[y0 - y : y1 - y, x0 - x : x1 - x]
        in_frame[i] = np.count_nonzero(part)
        owner[y0:y1, x0:x1][part] = i
    visible = np.bincount(owner[owner >= 0], minlength=len(placements))
    rows = []
    for i, p in enumerate(placements):
        if in_frame[i] == 0 or in_frame[i] < config.min_in_frame * total[i]:
            continue
        if visible[i] < config.min_visible * in_frame[i]:
            continue
        bx0, by0, bx1, by1 = p.box()
        bx0, bx1 = np.clip((bx0, bx1), 0, width)
        by0, by1 = np.clip((by0, by1), 0, height)
        if bx1 - bx0 < config.min_side_px or by1 - by0 < config.min_side_px:
            continue
        rows.append((bx0, by0, bx1 - bx0, by1 - by0, p.track.class_id, p.track.track_id))
    if not rows:
        return np.zeros(0, BBOX_DTYPE)
    cols = np.array(rows, dtype=np.float64).T  # [6, N]
    return make_boxes(np.full(len(rows), t), *cols[:4], cols[4].astype(np.uint32), cols[5].astype(np.uint32))


def scene_labels(scene: StreetScene, config: LabelConfig) -> np.ndarray:
    """All boxes of ``scene`` at ``config.rate_hz`` over its duration, sorted by time: :data:`BBOX_DTYPE`."""
    width, height = scene.config.width, scene.config.height
    parts = [
        boxes_at(scene.placements(float(t)), int(t), width, height, config)
        for t in label_times(scene.duration_us, config.rate_hz)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, BBOX_DTYPE)
