"""Background-activity filter for a stream of events: tonic's ``denoise_numpy``, chunk by chunk.

An event is kept when one of its four neighbouring pixels had an event less than ``filter_time`` µs before it; a
real camera's isolated noise events have none. tonic's rule is kept exactly, its start included (every pixel counts
as active until ``filter_time``), but tonic needs the whole recording at once and loops in Python: here each pixel's
memory is carried from one chunk to the next, so that filtering a stream in chunks of any size keeps exactly the
events tonic keeps from the whole recording, and a chunk is filtered with array operations. The sensor's size
replaces tonic's "largest coordinate seen", which changes nothing unless every event is at pixel (0, 0).
"""

from __future__ import annotations

import numpy as np

from data.events import validate_events

_NEIGHBOURS = ((-1, 0), (1, 0), (0, -1), (0, 1))


class BackgroundActivityFilter:
    """``filter(events) -> events``: the events of a ``width`` × ``height`` sensor that have a recent neighbour.

    One instance per stream (it holds the stream's per-pixel memory, 8 bytes a pixel); chunks must come in time
    order. :attr:`events_in` and :attr:`events_out` count what it has seen and kept.
    """

    def __init__(self, width: int, height: int, filter_time: int) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"sensor size must be positive, got {width}x{height}")
        if filter_time <= 0:
            raise ValueError(f"filter_time must be a positive number of µs, got {filter_time}")
        self.width, self.height, self.filter_time = int(width), int(height), int(filter_time)
        # per pixel: until when an event there makes its neighbours' events count (tonic's timestamp_memory)
        self._active_until = np.full(self.width * self.height, self.filter_time, dtype=np.int64)
        self.events_in = self.events_out = 0

    def __call__(self, events: np.ndarray) -> np.ndarray:
        """The kept events of the next chunk, in order."""
        validate_events(events, self.width, self.height)
        n = len(events)
        self.events_in += n
        if not n:
            return events
        t = events["t"]
        x, y = events["x"].astype(np.int64), events["y"].astype(np.int64)
        pixel = y * self.width + x
        # the chunk's events grouped by pixel, in stream order within a pixel: key = pixel · n + position
        order = np.argsort(pixel, kind="stable")
        grouped = pixel[order]
        keys = grouped * n + order
        position = np.arange(n, dtype=np.int64)
        kept = np.zeros(n, dtype=bool)
        for dx, dy in _NEIGHBOURS:
            nx, ny = x + dx, y + dy
            inside = (nx >= 0) & (nx < self.width) & (ny >= 0) & (ny < self.height)
            neighbour = np.where(inside, ny * self.width + nx, 0)
            # the neighbour's latest event before this one in the chunk, else its memory from the chunks before
            last = np.searchsorted(keys, neighbour * n + position) - 1
            found = (last >= 0) & (grouped[np.maximum(last, 0)] == neighbour)
            until = np.where(found, t[order[np.maximum(last, 0)]] + self.filter_time, self._active_until[neighbour])
            kept |= inside & (until > t)
        is_last = np.append(grouped[1:] != grouped[:-1], True)  # each pixel's last event of the chunk
        self._active_until[grouped[is_last]] = t[order[is_last]] + self.filter_time
        out = events[kept]
        self.events_out += len(out)
        return out
