"""Gen1 / Prophesee box labels (``*_bbox.npy``): both historical dtypes in, one dtype out.

Current layout (Prophesee toolbox ``BBOX_DTYPE``): ``t`` int64 µs, ``x, y, w, h`` float32 (top-left corner and
size in pixels), ``class_id`` uint32 (0 car, 1 pedestrian), ``track_id`` uint32, ``class_confidence`` float32.
The legacy Gen1 files name the time ``ts`` and the confidence ``confidence``; they are renamed on read.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from data.errors import LabelFormatError

BBOX_DTYPE = np.dtype(
    {
        "names": ["t", "x", "y", "w", "h", "class_id", "track_id", "class_confidence"],
        "formats": ["<i8", "<f4", "<f4", "<f4", "<f4", "<u4", "<u4", "<f4"],
        "offsets": [0, 8, 12, 16, 20, 24, 28, 32],
        "itemsize": 40,
    }
)
LEGACY_BBOX_DTYPE = np.dtype(
    [
        ("ts", "<u8"),
        ("x", "<f4"),
        ("y", "<f4"),
        ("w", "<f4"),
        ("h", "<f4"),
        ("class_id", "u1"),
        ("confidence", "<f4"),
        ("track_id", "<u4"),
    ]
)
GEN1_CLASSES = ("car", "pedestrian")
_RENAMES = {"ts": "t", "confidence": "class_confidence"}


def normalize_boxes(array: np.ndarray) -> np.ndarray:
    """Convert a label array in either known dtype to :data:`BBOX_DTYPE`, sorted stably by time."""
    names = array.dtype.names
    if names is None:
        raise LabelFormatError(f"labels must be a structured array, got dtype {array.dtype}")
    fields = {_RENAMES.get(n, n): n for n in names}
    missing = [n for n in ("t", "x", "y", "w", "h", "class_id") if n not in fields]
    if missing:
        raise LabelFormatError(f"label array lacks fields {missing}; has {list(names)}")
    out = np.zeros(array.shape[0] if array.ndim else 0, dtype=BBOX_DTYPE)
    if array.ndim != 1:
        raise LabelFormatError(f"labels must be 1-D, got shape {array.shape}")
    for name in BBOX_DTYPE.names:
        if name in fields:
            out[name] = array[fields[name]]
        elif name == "class_confidence":
            out[name] = 1.0
    if len(out):
        if np.any(array[fields["t"]] < 0):
            raise LabelFormatError("label timestamps must not be negative")
        geometry = np.stack([out[k] for k in ("x", "y", "w", "h")])
        if not np.all(np.isfinite(geometry)):
            raise LabelFormatError("label boxes contain NaN or infinite values")
        if np.any(out["w"] < 0) or np.any(out["h"] < 0):
            raise LabelFormatError("label boxes must have non-negative width and height")
    # Field-by-field copy into zeros: fancy-indexing a padded record array leaves the padding bytes undefined, and
    # files written from it would differ from run to run.
    order = np.argsort(out["t"], kind="stable")
    ordered = np.zeros(len(out), dtype=BBOX_DTYPE)
    for name in BBOX_DTYPE.names:
        ordered[name] = out[name][order]
    return ordered


def read_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """Load a ``*_bbox.npy`` file (no pickle) and return it as :data:`BBOX_DTYPE`."""
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise LabelFormatError(f"{path}: not a readable .npy label file ({exc})") from exc
    if not isinstance(array, np.ndarray):
        raise LabelFormatError(f"{path}: expected a single array, got {type(array).__name__}")
    try:
        return normalize_boxes(array)
    except LabelFormatError as exc:
        raise LabelFormatError(f"{path}: {exc}") from exc


def write_labels(path: str | os.PathLike[str], boxes: np.ndarray) -> None:
    """Save boxes (any accepted dtype) as a ``*_bbox.npy`` in :data:`BBOX_DTYPE`."""
    np.save(Path(path), normalize_boxes(boxes), allow_pickle=False)


def make_boxes(
    t: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    h: np.ndarray,
    class_id: np.ndarray,
    track_id: np.ndarray | None = None,
    class_confidence: np.ndarray | None = None,
) -> np.ndarray:
    """Build a :data:`BBOX_DTYPE` array from columns (track ids default to 0, confidences to 1)."""
    out = np.zeros(len(t), dtype=BBOX_DTYPE)
    for name, column in (("t", t), ("x", x), ("y", y), ("w", w), ("h", h), ("class_id", class_id)):
        out[name] = column
    out["track_id"] = 0 if track_id is None else track_id
    out["class_confidence"] = 1.0 if class_confidence is None else class_confidence
    return out
