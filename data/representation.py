"""The network input: a stacked histogram of one window, ``[T, 2, H, W]`` uint8 counts.

Each event lands in exactly one time bin ``(t - t_start) * T // Δ`` and one polarity channel (0 = OFF, 1 = ON; they
never merge); counts saturate at ``cutoff``; height and width are zero-padded up to a multiple of ``pad_multiple``
so that every stride-32 feature map is whole. An empty window gives zeros of the same fixed shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from data.errors import EventValidationError
from data.windows import DEFAULT_WINDOW_US


@njit(cache=True, nogil=True)
def _histogram_kernel(
    t: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    p: np.ndarray,
    t_start: int,
    window_us: int,
    width: int,
    height: int,
    cutoff: int,
    out: np.ndarray,
) -> int:
    # out [T, 2, H_pad, W_pad] uint8, zeroed by the caller; returns the index of the first bad event, or -1
    bins = out.shape[0]
    for i in range(t.shape[0]):
        dt = t[i] - t_start
        if dt < 0 or dt >= window_us or x[i] >= width or y[i] >= height or p[i] < 0 or p[i] > 1:
            return i
        b = dt * bins // window_us
        if out[b, p[i], y[i], x[i]] < cutoff:
            out[b, p[i], y[i], x[i]] += 1
    return -1


def padded_size(size: int, multiple: int) -> int:
    """``size`` rounded up to a multiple of ``multiple``."""
    return -(-size // multiple) * multiple


@dataclass(frozen=True)
class StackedHistogram:
    """Window events → ``[bins, 2, H_pad, W_pad]`` uint8 counts (see the module docstring)."""

    bins: int = 5
    window_us: int = DEFAULT_WINDOW_US
    height: int = 240
    width: int = 304
    cutoff: int = 10
    pad_multiple: int = 32

    def __post_init__(self) -> None:
        for name in ("bins", "window_us", "height", "width", "cutoff", "pad_multiple"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"StackedHistogram.{name} must be positive, got {getattr(self, name)}")
        if self.cutoff > 255:
            raise ValueError(f"StackedHistogram.cutoff must fit in uint8 (<= 255), got {self.cutoff}")
        if self.window_us % self.bins:
            raise ValueError(f"window_us ({self.window_us}) must be a multiple of bins ({self.bins})")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(T, 2, H_pad, W_pad)``."""
        return (
            self.bins,
            2,
            padded_size(self.height, self.pad_multiple),
            padded_size(self.width, self.pad_multiple),
        )

    def __call__(self, events: np.ndarray, t_start: int) -> np.ndarray:
        """Histogram of ``events``, which must all lie in ``[t_start, t_start + window_us)`` and on the sensor."""
        out = np.zeros(self.shape, dtype=np.uint8)
        if len(events):
            bad = _histogram_kernel(
                events["t"],
                events["x"],
                events["y"],
                events["p"],
                int(t_start),
                self.window_us,
                self.width,
                self.height,
                self.cutoff,
                out,
            )
            if bad >= 0:
                e = events[bad]
                raise EventValidationError(
                    f"event {bad} (t={int(e['t'])}, x={int(e['x'])}, y={int(e['y'])}, p={int(e['p'])}) is outside "
                    f"the window [{t_start}, {t_start + self.window_us}) or the {self.width}x{self.height} sensor"
                )
        return out
