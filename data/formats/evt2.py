"""Prophesee RAW EVT 2.0: 32-bit little-endian words.

Word type in bits 28-31: 0x0 CD_OFF and 0x1 CD_ON (timestamp bits 0-5 in bits 22-27, x in bits 11-21, y in bits
0-10), 0x8 TIME_HIGH (timestamp bits 6-33 in bits 0-27); other types (triggers, vendor words) carry no CD events.
The 28-bit TIME_HIGH counter wraps after 2**34 µs; a decrease is counted as one wrap-around.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from data.errors import EventValidationError
from data.events import EVENT_DTYPE, validate_events
from data.formats.stream_decoder import StreamDecoder
from data.formats.timehigh import time_high_schedule

_TIME_HIGH_BITS = 28
_DROPPED = 3  # index of the dropped-event counter in the carried state


@njit(cache=True, nogil=True)
def _decode_kernel(words: np.ndarray, state: np.ndarray, out: np.ndarray) -> int:
    # words [N] uint32; out [N, 2] uint64 (one EVENT_DTYPE record per row); returns the number of events written
    time_high, wraps, have_high, dropped = state[0], state[1], state[2], state[3]
    n = 0
    for i in range(words.shape[0]):
        w = np.uint64(words[i])
        kind = w >> 28
        if kind <= 1:
            if have_high == 0:
                dropped += 1
                continue
            t = (((wraps << _TIME_HIGH_BITS) + time_high) << 6) | ((w >> 22) & 0x3F)
            out[n, 0] = t
            out[n, 1] = ((w >> 11) & 0x7FF) | ((w & 0x7FF) << 16) | (kind << 32)
            n += 1
        elif kind == 0x8:
            high = np.int64(w & 0x0FFFFFFF)
            if have_high and high < time_high:
                wraps += 1
            time_high = high
            have_high = 1
    state[0], state[1], state[2], state[3] = time_high, wraps, have_high, dropped
    return n


class Evt2Decoder(StreamDecoder):
    """Incremental EVT 2.0 decoder: feed bytes in chunks of any size and alignment, get events.

    Events before the first TIME_HIGH word have no known time and are dropped (counted in :attr:`dropped`).
    """

    word_dtype = np.dtype("<u4")

    def __init__(self) -> None:
        super().__init__()
        self._state = np.zeros(4, np.int64)

    @property
    def dropped(self) -> int:
        """CD events dropped so far because no TIME_HIGH had been seen."""
        return int(self._state[_DROPPED])

    def _decode_words(self, words: np.ndarray) -> np.ndarray:
        out = np.empty(len(words), dtype=EVENT_DTYPE)
        n = _decode_kernel(words, self._state, out.view(np.uint64).reshape(-1, 2)) if len(words) else 0
        return out[:n]


def encode_evt2(events: np.ndarray) -> bytes:
    """Encode time-ordered events as EVT 2.0 words (TIME_HIGH emitted whenever bits 6+ of ``t`` change)."""
    validate_events(events)
    if len(events) and (events["x"].max() >= 1 << 11 or events["y"].max() >= 1 << 11):
        raise EventValidationError("EVT 2.0 coordinates must be below 2048")
    t = events["t"].astype(np.int64)
    count, highs = time_high_schedule(t >> 6, 1 << (_TIME_HIGH_BITS - 1))
    words = np.empty(len(events) + len(highs), dtype="<u4")
    event_pos = np.arange(len(events)) + np.cumsum(count)
    is_event = np.zeros(len(words), bool)
    is_event[event_pos] = True
    words[~is_event] = (0x8 << 28) | (highs & 0x0FFFFFFF)
    words[event_pos] = (
        (events["p"].astype(np.uint32) << 28)
        | ((t & 0x3F).astype(np.uint32) << 22)
        | (events["x"].astype(np.uint32) << 11)
        | events["y"].astype(np.uint32)
    )
    return words.tobytes()
