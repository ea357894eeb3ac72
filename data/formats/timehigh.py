"""Shared helpers for the RAW encodings, whose timestamps are split into a periodic TIME_HIGH and a low part."""

from __future__ import annotations

import numpy as np


def time_high_schedule(high: np.ndarray, max_step: int) -> tuple[np.ndarray, np.ndarray]:
    """TIME_HIGH words an encoder must emit before each event.

    ``high`` [N] is each event's full (unwrapped) time-high value. A word is due whenever it changes; over gaps
    longer than ``max_step`` (half the counter's range) intermediate words are inserted so that a decoder can count
    every wrap-around of the counter. Returns ``(count [N], values [sum(count)])`` in emission order.
    """
    if len(high) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    previous = np.concatenate(([high[0] - 1], high[:-1]))
    gap = high - previous
    count = np.where(gap > 0, -(-gap // max_step), 0).astype(np.int64)
    # Within a group the k-th word (k = 1..count) carries min(previous + k*max_step, high).
    group_start = np.repeat(np.cumsum(count) - count, count)
    k = np.arange(int(count.sum()), dtype=np.int64) - group_start + 1
    values = np.minimum(np.repeat(previous, count) + k * max_step, np.repeat(high, count))
    return count, values
