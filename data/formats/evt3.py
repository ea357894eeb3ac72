"""Prophesee RAW EVT 3.0: 16-bit little-endian words, stateful and vectorised.

Word type in bits 12-15: 0x0 ADDR_Y (y in bits 0-10), 0x2 ADDR_X (x in 0-10, polarity bit 11; one event),
0x3 VECT_BASE_X (x in 0-10, polarity bit 11), 0x4 VECT_12 and 0x5 VECT_8 (a bit mask of events at base_x + i, then
base_x advances by 12 / 8), 0x6 TIME_LOW (timestamp bits 0-11), 0x8 TIME_HIGH (timestamp bits 12-23). Other types
(continued words, triggers, vendor words) carry no CD events. The 24-bit time wraps every 2**24 µs (16.8 s); each
decrease of TIME_HIGH counts one wrap-around. TIME_LOW never adds to the wrap count (expelliarmus 1.1.12 does, and
gets timestamps wrong).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from data.errors import EventValidationError
from data.events import EVENT_DTYPE, validate_events
from data.formats.stream_decoder import StreamDecoder
from data.formats.timehigh import time_high_schedule

_STATE_SIZE = 9
_DROPPED = 8


@njit(cache=True, nogil=True)
def _capacity(words: np.ndarray) -> int:
    n = 0
    for i in range(words.shape[0]):
        kind = words[i] >> 12
        n += 1 if kind == 0x2 else 12 if kind == 0x4 else 8 if kind == 0x5 else 0
    return n


@njit(cache=True, nogil=True)
def _decode_kernel(words: np.ndarray, state: np.ndarray, out: np.ndarray) -> int:
    # words [N] uint16; out [M, 2] uint64 (one EVENT_DTYPE record per row); returns the number of events written
    y, base_x, vec_pol, time_low, time_high = state[0], state[1], state[2], state[3], state[4]
    wraps, flags, dropped = state[5], state[6], state[_DROPPED]
    have_high, have_y, have_base = flags & 1, (flags >> 1) & 1, (flags >> 2) & 1
    n = 0
    for i in range(words.shape[0]):
        w = np.int64(words[i])
        kind = w >> 12
        if kind == 0x0:
            y = w & 0x7FF
            have_y = 1
        elif kind == 0x2:
            if have_high == 0 or have_y == 0:
                dropped += 1
                continue
            out[n, 0] = (((wraps << 12) + time_high) << 12) | time_low
            out[n, 1] = (w & 0x7FF) | (y << 16) | (((w >> 11) & 1) << 32)
            n += 1
        elif kind == 0x3:
            base_x = w & 0x7FF
            vec_pol = (w >> 11) & 1
            have_base = 1
        elif kind == 0x4 or kind == 0x5:
            width = 12 if kind == 0x4 else 8
            mask = w & ((1 << width) - 1)
            if have_high == 0 or have_y == 0 or have_base == 0:
                dropped += (mask > 0) * 1
            else:
                t = (((wraps << 12) + time_high) << 12) | time_low
                for b in range(width):
                    if (mask >> b) & 1:
                        out[n, 0] = t
                        out[n, 1] = (base_x + b) | (y << 16) | (vec_pol << 32)
                        n += 1
            base_x += width
        elif kind == 0x6:
            time_low = w & 0xFFF
        elif kind == 0x8:
            high = w & 0xFFF
            if have_high == 1 and high < time_high:
                wraps += 1
            time_high = high
            have_high = 1
    state[0], state[1], state[2], state[3], state[4] = y, base_x, vec_pol, time_low, time_high
    state[5], state[6], state[_DROPPED] = wraps, have_high | (have_y << 1) | (have_base << 2), dropped
    return n


class Evt3Decoder(StreamDecoder):
    """Incremental EVT 3.0 decoder: feed bytes in chunks of any size and alignment, get events.

    Events before the first TIME_HIGH / ADDR_Y / VECT_BASE_X they depend on have no known time or address and are
    dropped (counted in :attr:`dropped`).
    """

    word_dtype = np.dtype("<u2")

    def __init__(self) -> None:
        super().__init__()
        self._state = np.zeros(_STATE_SIZE, np.int64)

    @property
    def dropped(self) -> int:
        """Events dropped so far because their time or address was not yet known."""
        return int(self._state[_DROPPED])

    def _decode_words(self, words: np.ndarray) -> np.ndarray:
        out = np.empty(_capacity(words) if len(words) else 0, dtype=EVENT_DTYPE)
        # The kernel runs even when no event can come out: the words still update the carried state.
        n = _decode_kernel(words, self._state, out.view(np.uint64).reshape(-1, 2)) if len(words) else 0
        return out[:n]


def encode_evt3(events: np.ndarray) -> bytes:
    """Encode time-ordered events as EVT 3.0 words (no vector words; TIME_HIGH/TIME_LOW/ADDR_Y only on change)."""
    validate_events(events)
    if len(events) and (events["x"].max() >= 1 << 11 or events["y"].max() >= 1 << 11):
        raise EventValidationError("EVT 3.0 coordinates must be below 2048")
    n = len(events)
    t = events["t"].astype(np.int64)
    y = events["y"].astype(np.int64)
    high_count, highs = time_high_schedule(t >> 12, 1 << 11)
    new_t = np.ones(n, bool)
    new_t[1:] = t[1:] != t[:-1]
    new_y = np.ones(n, bool)
    new_y[1:] = y[1:] != y[:-1]
    new_y |= new_t  # re-state y after a time change, as cameras do
    per_event = high_count + new_t + new_y + 1  # [TIME_HIGH...][TIME_LOW][ADDR_Y]ADDR_X
    start = np.cumsum(per_event) - per_event
    words = np.empty(int(per_event.sum()), dtype="<u2")
    high_pos = np.repeat(start, high_count) + (
        np.arange(len(highs)) - np.repeat(np.cumsum(high_count) - high_count, high_count)
    )
    words[high_pos] = (0x8 << 12) | (highs & 0xFFF)
    low_pos = start + high_count
    words[low_pos[new_t]] = (0x6 << 12) | (t[new_t] & 0xFFF)
    y_pos = low_pos + new_t
    words[y_pos[new_y]] = y[new_y] & 0x7FF
    words[y_pos + new_y] = (0x2 << 12) | (events["p"].astype(np.int64) << 11) | events["x"].astype(np.int64)
    return words.tobytes()
