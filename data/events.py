"""The one event dtype used everywhere, and its validation.

``t`` is int64 microseconds, ``x``/``y`` are uint16 pixel coordinates, ``p`` is int8 polarity in {0, 1}
(0 = OFF, 1 = ON). Fields are aligned (16 bytes per event) so that column access is cheap.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from data.errors import EventValidationError

EVENT_DTYPE = np.dtype(
    {"names": ["t", "x", "y", "p"], "formats": ["<i8", "<u2", "<u2", "i1"], "offsets": [0, 8, 10, 12], "itemsize": 16}
)


def empty_events(n: int = 0) -> np.ndarray:
    """An uninitialised event array of length ``n`` (zeros when ``n == 0``)."""
    return np.empty(n, dtype=EVENT_DTYPE) if n else np.zeros(0, dtype=EVENT_DTYPE)


def make_events(t: npt.ArrayLike, x: npt.ArrayLike, y: npt.ArrayLike, p: npt.ArrayLike) -> np.ndarray:
    """Build an event array from four equally long columns (no validation; see :func:`validate_events`)."""
    columns = [np.asarray(c) for c in (t, x, y, p)]
    lengths = {c.shape for c in columns}
    if len(lengths) != 1 or any(c.ndim != 1 for c in columns):
        raise EventValidationError(f"t, x, y, p must be 1-D and equally long, got shapes {[c.shape for c in columns]}")
    out = empty_events(len(columns[0]))
    for name, column in zip("txyp", columns, strict=True):
        is_integral = np.issubdtype(column.dtype, np.integer) or np.issubdtype(column.dtype, np.bool_)
        if column.size and not is_integral and not (np.all(np.isfinite(column)) and np.all(column == np.round(column))):
            raise EventValidationError(f"column {name!r} must hold integers, got non-integer values")
        bounds = _FIELD_BOUNDS[name]
        if column.size and (column.min() < bounds[0] or column.max() > bounds[1]):
            raise EventValidationError(
                f"column {name!r} has values in [{column.min()}, {column.max()}], outside [{bounds[0]}, {bounds[1]}]"
            )
        out[name] = column
    return out


_FIELD_BOUNDS = {
    "t": (np.iinfo(np.int64).min, np.iinfo(np.int64).max),
    "x": (0, np.iinfo(np.uint16).max),
    "y": (0, np.iinfo(np.uint16).max),
    "p": (np.iinfo(np.int8).min, np.iinfo(np.int8).max),
}


def as_events(array: np.ndarray) -> np.ndarray:
    """Convert a structured array with fields t (or ts), x, y, p to :data:`EVENT_DTYPE`."""
    if array.dtype == EVENT_DTYPE:
        return array
    names = array.dtype.names or ()
    t_name = "t" if "t" in names else "ts" if "ts" in names else None
    if t_name is None or not {"x", "y", "p"} <= set(names):
        raise EventValidationError(f"expected a structured array with fields t, x, y, p; got fields {names}")
    return make_events(array[t_name], array["x"], array["y"], array["p"])


def validate_events(events: np.ndarray, width: int | None = None, height: int | None = None) -> np.ndarray:
    """Check the event contract and return ``events`` unchanged.

    Raises:
        EventValidationError: wrong dtype, negative or decreasing timestamps, coordinates outside
            ``width`` × ``height``, or a polarity other than 0/1. The message names the first offending index.
    """
    if not isinstance(events, np.ndarray) or events.dtype != EVENT_DTYPE:
        dtype = getattr(events, "dtype", type(events).__name__)
        raise EventValidationError(f"events must be a numpy array of EVENT_DTYPE, got {dtype}")
    if events.ndim != 1:
        raise EventValidationError(f"events must be 1-D, got shape {events.shape}")
    if len(events) == 0:
        return events
    t = events["t"]
    if t[0] < 0 or (len(t) > 1 and t.min() < 0):
        i = int(np.argmax(t < 0))
        raise EventValidationError(f"negative timestamp {int(t[i])} µs at event {i}")
    decreasing = np.flatnonzero(t[1:] < t[:-1])
    if decreasing.size:
        i = int(decreasing[0]) + 1
        raise EventValidationError(f"timestamps must not decrease: event {i} has t={int(t[i])} after t={int(t[i - 1])}")
    p = events["p"]
    bad_p = np.flatnonzero((p != 0) & (p != 1))
    if bad_p.size:
        i = int(bad_p[0])
        raise EventValidationError(f"polarity must be 0 or 1, event {i} has p={int(p[i])}")
    for name, limit in (("x", width), ("y", height)):
        if limit is None:
            continue
        off = np.flatnonzero(events[name] >= limit)
        if off.size:
            i = int(off[0])
            raise EventValidationError(
                f"event {i} has {name}={int(events[name][i])}, outside a sensor of {width}x{height}"
            )
    return events


def concat_events(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate event arrays (an empty list gives an empty array)."""
    # dtype= keeps the aligned layout: numpy 2 otherwise drops the padding and returns a different dtype
    return np.concatenate(parts, dtype=EVENT_DTYPE) if parts else empty_events()
