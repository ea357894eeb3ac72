"""Consecutive time windows ``[kΔ, (k+1)Δ)`` over an event stream, aligned in the recording's own time base.

One :class:`WindowCutter` serves files (``predict``, ``eval``) and live streams (the service) alike, so every entry
point cuts the same windows: window ``k`` covers ``[k·Δ, (k+1)·Δ)``, empty windows are emitted too, and a detection
carries the end time of its window.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from data.errors import EventValidationError
from data.events import concat_events, validate_events
from data.formats.recording import Recording

DEFAULT_WINDOW_US = 50_000


@dataclass(frozen=True)
class Window:
    """The events of window ``index``: ``t_start <= t < t_end`` (µs)."""

    index: int
    t_start: int
    t_end: int
    events: np.ndarray


def label_window_index(t: np.ndarray | int, window_us: int = DEFAULT_WINDOW_US) -> np.ndarray:
    """Index of the window whose end is nearest to each label timestamp (ties go to the later end; never < 0)."""
    t = np.asarray(t, dtype=np.int64)
    return np.maximum((t + window_us // 2) // window_us - 1, 0)


class WindowCutter:
    """Cut a time-ordered event stream, pushed in chunks of any size, into consecutive windows.

    A window is complete once an event at or past its end arrives; :meth:`push` returns the windows it completed
    (empty ones included) and :meth:`flush` the window in progress. Events older than an already emitted window
    (possible only after a flush) are dropped and counted in :attr:`late_events`.
    """

    def __init__(self, window_us: int = DEFAULT_WINDOW_US, first_index: int | None = None) -> None:
        if window_us <= 0:
            raise ValueError(f"window_us must be positive, got {window_us}")
        self.window_us = window_us
        self.next_index = first_index
        self.late_events = 0
        self._buffer: list[np.ndarray] = []
        self._last_t = -1

    def push(self, events: np.ndarray) -> list[Window]:
        """Add events (non-decreasing in time, also across calls) and return the windows this completes."""
        validate_events(events)
        if not len(events):
            return []
        if int(events["t"][0]) < self._last_t:
            raise EventValidationError(
                f"timestamps must not decrease across chunks: t={int(events['t'][0])} after t={self._last_t}"
            )
        self._last_t = int(events["t"][-1])
        if self.next_index is None:
            self.next_index = int(events["t"][0]) // self.window_us
        start = self.next_index * self.window_us
        late = int(np.searchsorted(events["t"], start, "left"))
        self.late_events += late
        self._buffer.append(events[late:])
        return self._emit_until(self._last_t // self.window_us)

    def advance_to(self, t: int) -> list[Window]:
        """Declare that no event before ``t`` will follow; completes the windows ending at or before ``t``."""
        if self.next_index is None:
            self.next_index = t // self.window_us
            return []
        self._last_t = max(self._last_t, t)
        return self._emit_until(t // self.window_us)

    def flush(self) -> list[Window]:
        """Emit the window in progress (if any event is buffered for it)."""
        if self.next_index is None or not any(len(b) for b in self._buffer):
            return []
        return self._emit_until(self.next_index + 1)

    def _emit_until(self, stop_index: int) -> list[Window]:
        # Emits windows next_index .. stop_index-1 from the buffer.
        assert self.next_index is not None
        if stop_index <= self.next_index:
            return []
        pending = concat_events(self._buffer)
        ends = np.arange(self.next_index + 1, stop_index + 1, dtype=np.int64) * self.window_us
        cuts = np.searchsorted(pending["t"], ends, "left")
        windows = []
        lo = 0
        for k, (end, hi) in enumerate(zip(ends, cuts, strict=True)):
            windows.append(Window(self.next_index + k, int(end) - self.window_us, int(end), pending[lo:hi]))
            lo = int(hi)
        rest = pending[lo:]
        self._buffer = [rest] if len(rest) else []
        self.next_index = stop_index
        return windows


def iter_windows(
    source: Recording | Iterable[np.ndarray],
    window_us: int = DEFAULT_WINDOW_US,
    t0: int | None = None,
    t1: int | None = None,
) -> Iterator[Window]:
    """Stream consecutive windows of a recording (or of an iterable of event chunks) without loading it whole.

    Without ``t0`` the first window is the one holding the first event; with it, window ``t0 // Δ``. Without ``t1``
    the last window holds the last event; with it, windows run up to the one containing ``t1 - 1``.
    """
    chunks = source.iter_chunks(t0, t1) if hasattr(source, "iter_chunks") else source
    cutter = WindowCutter(window_us, None if t0 is None else t0 // window_us)
    for chunk in chunks:
        yield from cutter.push(chunk)
    if t1 is not None:
        yield from cutter.advance_to((t1 - 1) // window_us * window_us + window_us)
    else:
        yield from cutter.flush()
