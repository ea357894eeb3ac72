"""Pictures of event windows with label and detection boxes, drawn with headless OpenCV (never a window).

Events are drawn per pixel in the colour of the polarity that fired most in the window, on a dark background, then
upscaled without smoothing so single events stay visible; boxes and class names are drawn at the upscaled size.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from data.formats.labels import GEN1_CLASSES

Colour = tuple[int, int, int]  # BGR


@dataclass(frozen=True)
class Style:
    """Colours (BGR) and scale of a rendered frame."""

    scale: int = 3
    background: Colour = (40, 30, 25)
    on: Colour = (240, 235, 230)
    off: Colour = (215, 135, 60)
    label_colours: tuple[Colour, ...] = ((90, 230, 90), (0, 200, 255))  # per class id: car green, pedestrian amber
    detection_colour: Colour = (255, 60, 255)
    text_colour: Colour = (230, 230, 230)


def event_image(events: np.ndarray, width: int, height: int, style: Style) -> np.ndarray:
    """An ``[height·scale, width·scale, 3]`` uint8 BGR picture of ``events`` (each pixel: its majority polarity)."""
    pixel = events["y"].astype(np.int64) * width + events["x"]
    on = np.bincount(pixel[events["p"] == 1], minlength=width * height)
    off = np.bincount(pixel[events["p"] == 0], minlength=width * height)
    image = np.empty((width * height, 3), np.uint8)
    image[:] = style.background
    image[(off > 0) & (off > on)] = style.off
    image[(on > 0) & (on >= off)] = style.on
    image = image.reshape(height, width, 3)
    return cv2.resize(image, (width * style.scale, height * style.scale), interpolation=cv2.INTER_NEAREST)


def boxes_near(boxes: np.ndarray, t: int, tolerance: int) -> np.ndarray:
    """The boxes that share the timestamp nearest to ``t``, if it lies within ``tolerance`` µs (else none)."""
    if len(boxes) == 0:
        return boxes
    times = np.unique(boxes["t"])
    nearest = times[np.argmin(np.abs(times - t))]
    return boxes[boxes["t"] == nearest] if abs(int(nearest) - t) <= tolerance else boxes[:0]


def draw_boxes(image: np.ndarray, boxes: np.ndarray, style: Style, detections: bool = False) -> None:
    """Draw boxes (:data:`BBOX_DTYPE`, sensor pixels) in place, each with its class name (and score for detections)."""
    s = style.scale
    for box in boxes:
        class_id = int(box["class_id"])
        name = GEN1_CLASSES[class_id] if class_id < len(GEN1_CLASSES) else f"class {class_id}"
        if detections:
            colour, text = style.detection_colour, f"{name} {float(box['class_confidence']):.2f}"
        else:
            colour = style.label_colours[class_id % len(style.label_colours)]
            text = name
        x0, y0 = round(float(box["x"]) * s), round(float(box["y"]) * s)
        x1, y1 = round(float(box["x"] + box["w"]) * s), round(float(box["y"] + box["h"]) * s)
        cv2.rectangle(image, (x0, y0), (x1, y1), colour, 2 if detections else 1, cv2.LINE_AA)
        # Labels write their name above the box, detections below it, so both stay readable when they overlap.
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        ty = y1 + th + 3 if detections else y0 - 3
        ty = min(max(ty, th + 1), image.shape[0] - base)
        cv2.rectangle(image, (x0, ty - th - 2), (x0 + tw + 2, ty + base - 1), (0, 0, 0), cv2.FILLED)
        cv2.putText(image, text, (x0 + 1, ty - 1), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)


def draw_caption(image: np.ndarray, text: str, style: Style) -> None:
    """Write one line of text in the top-left corner, in place."""
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    cv2.rectangle(image, (0, 0), (tw + 8, th + base + 8), (0, 0, 0), cv2.FILLED)
    cv2.putText(image, text, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.5, style.text_colour, 1, cv2.LINE_AA)


def render_frame(
    events: np.ndarray,
    width: int,
    height: int,
    labels: np.ndarray,
    detections: np.ndarray,
    caption: str,
    style: Style,
) -> np.ndarray:
    """One BGR frame: events, label boxes, detection boxes and a caption."""
    image = event_image(events, width, height, style)
    draw_boxes(image, labels, style)
    draw_boxes(image, detections, style, detections=True)
    draw_caption(image, caption, style)
    return image
