"""Prophesee DAT (``*_td.dat``, "Event2D") files: memory-mapped reading, time-range access and writing.

Layout: ``%`` header lines (``Width``/``Height`` optional), then one byte event type (0 = Event2D, 12 = EventCD) and
one byte event size (8), then little-endian records: uint32 ``t`` µs; uint32 with ``x`` in bits 0-13, ``y`` in bits
14-27 and ``p`` in bit 28.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numba import njit

from data.errors import EventValidationError, RecordingFormatError
from data.events import EVENT_DTYPE, empty_events, validate_events
from data.formats.header import Header, read_header
from data.formats.stream_decoder import StreamDecoder

DAT_RECORD = np.dtype([("t", "<u4"), ("data", "<u4")])
_EVENT_TYPES = {0: "Event2D", 12: "EventCD"}
GEN1_WIDTH, GEN1_HEIGHT = 304, 240


@njit(cache=True, nogil=True)
def _decode_kernel(words: np.ndarray, out: np.ndarray) -> None:
    # words [N, 2] uint32 (t, x|y<<14|p<<28); out [N, 2] uint64 = one EVENT_DTYPE record each (t; x|y<<16|p<<32)
    for i in range(words.shape[0]):
        data = np.uint64(words[i, 1])
        out[i, 0] = np.uint64(words[i, 0])
        out[i, 1] = (data & 0x3FFF) | (((data >> 14) & 0x3FFF) << 16) | (((data >> 28) & 1) << 32)


def decode_dat_records(records: np.ndarray) -> np.ndarray:
    """Decode an array of :data:`DAT_RECORD` into :data:`EVENT_DTYPE` (compiled, one pass)."""
    out = np.zeros(len(records), dtype=EVENT_DTYPE)
    if len(records):
        words = np.ascontiguousarray(records).view(np.uint32).reshape(-1, 2)
        _decode_kernel(words, out.view(np.uint64).reshape(-1, 2))
    return out


def encode_dat_records(events: np.ndarray) -> np.ndarray:
    """Encode events into :data:`DAT_RECORD` (timestamps must fit in uint32, coordinates in 14 bits)."""
    records = np.empty(len(events), dtype=DAT_RECORD)
    if len(events):
        if events["t"].min() < 0 or events["t"].max() > np.iinfo(np.uint32).max:
            raise EventValidationError("DAT timestamps must lie in [0, 2**32) µs")
        if events["x"].max() >= 1 << 14 or events["y"].max() >= 1 << 14:
            raise EventValidationError("DAT coordinates must be below 16384")
    records["t"] = events["t"]
    records["data"] = (
        events["x"].astype(np.uint32) | (events["y"].astype(np.uint32) << 14) | (events["p"].astype(np.uint32) << 28)
    )
    return records


class DatStreamDecoder(StreamDecoder):
    """Incremental decoder of bare DAT records (no header); a record split across chunks is joined."""

    word_dtype = DAT_RECORD

    def _decode_words(self, words: np.ndarray) -> np.ndarray:
        return decode_dat_records(words)


class DatRecording:
    """A DAT file opened by memory map. Reading a time range touches only the pages it needs."""

    format = "dat"

    def __init__(self, path: str | os.PathLike[str], width: int | None = None, height: int | None = None) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            self.header: Header = read_header(f, str(self.path))
            offset = self.header.size
            if self.header.lines:
                type_size = f.read(2)
                if len(type_size) < 2:
                    raise RecordingFormatError(f"{self.path}: truncated after the header (no event type/size bytes)")
                ev_type, ev_size = type_size
                if ev_type not in _EVENT_TYPES or ev_size != DAT_RECORD.itemsize:
                    raise RecordingFormatError(
                        f"{self.path}: unsupported DAT event type {ev_type} / size {ev_size} "
                        f"(expected type 0 or 12 with size 8)"
                    )
                offset += 2
        payload = self.path.stat().st_size - offset
        if payload % DAT_RECORD.itemsize:
            raise RecordingFormatError(
                f"{self.path}: truncated DAT file ({payload % DAT_RECORD.itemsize} trailing bytes after "
                f"{payload // DAT_RECORD.itemsize} whole 8-byte events)"
            )
        self.data_offset = offset
        self.width = width or self.header.get_int("width") or GEN1_WIDTH
        self.height = height or self.header.get_int("height") or GEN1_HEIGHT
        n = payload // DAT_RECORD.itemsize
        self._records = (
            np.memmap(self.path, dtype=DAT_RECORD, mode="r", offset=offset, shape=(n,))
            if n
            else np.zeros(0, DAT_RECORD)
        )

    def __len__(self) -> int:
        return len(self._records)

    @property
    def t_first(self) -> int | None:
        """Timestamp of the first event (µs), or None for an empty file."""
        return int(self._records[0]["t"]) if len(self) else None

    @property
    def t_last(self) -> int | None:
        """Timestamp of the last event (µs), or None for an empty file."""
        return int(self._records[-1]["t"]) if len(self) else None

    def index_of_time(self, t: int) -> int:
        """Index of the first event with timestamp ``>= t`` (binary search over the memory map; O(log N) reads)."""
        lo, hi = 0, len(self)
        ts = self._records["t"]
        while lo < hi:
            mid = (lo + hi) // 2
            if int(ts[mid]) < t:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def read(self, t0: int | None = None, t1: int | None = None) -> np.ndarray:
        """Events with ``t0 <= t < t1`` (either bound may be None for open)."""
        start = 0 if t0 is None else self.index_of_time(t0)
        stop = len(self) if t1 is None else self.index_of_time(t1)
        return self.read_slice(start, max(start, stop))

    def read_slice(self, start: int, stop: int) -> np.ndarray:
        """Events ``start:stop`` by index."""
        return decode_dat_records(np.asarray(self._records[start:stop])) if stop > start else empty_events()

    def iter_chunks(
        self, t0: int | None = None, t1: int | None = None, chunk_events: int = 1 << 20
    ) -> Iterator[np.ndarray]:
        """Yield the events with ``t0 <= t < t1`` in consecutive chunks of at most ``chunk_events`` events."""
        start = 0 if t0 is None else self.index_of_time(t0)
        stop = len(self) if t1 is None else self.index_of_time(t1)
        for lo in range(start, stop, chunk_events):
            yield self.read_slice(lo, min(lo + chunk_events, stop))


class DatWriter:
    """Stream events into a DAT file chunk by chunk (context manager).

    ``date`` goes into a ``% Date`` line when given; leave it None for byte-identical output across runs.
    """

    def __init__(
        self, path: str | os.PathLike[str], width: int = GEN1_WIDTH, height: int = GEN1_HEIGHT, date: str | None = None
    ) -> None:
        self.path = Path(path)
        self.width, self.height = width, height
        self._last_t = -1
        lines = ["% Data file containing Event2D events.", "% Version 2"]
        if date:
            lines.append(f"% Date {date}")
        lines += [f"% Height {height}", f"% Width {width}"]
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()/__exit__
        self._file.write(("\n".join(lines) + "\n").encode("ascii") + bytes([0, DAT_RECORD.itemsize]))

    def write(self, events: np.ndarray) -> None:
        """Append events (validated against the sensor and against the previous chunk's last timestamp)."""
        validate_events(events, self.width, self.height)
        if len(events) == 0:
            return
        if int(events["t"][0]) < self._last_t:
            raise EventValidationError(
                f"chunk starts at t={int(events['t'][0])} before the previous chunk's last t={self._last_t}"
            )
        self._file.write(encode_dat_records(events).tobytes())
        self._last_t = int(events["t"][-1])

    def close(self) -> None:
        """Flush and close the file."""
        self._file.close()

    def __enter__(self) -> DatWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_dat(
    path: str | os.PathLike[str],
    events: np.ndarray,
    width: int = GEN1_WIDTH,
    height: int = GEN1_HEIGHT,
    date: str | None = None,
) -> None:
    """Write all ``events`` to a DAT file."""
    with DatWriter(path, width, height, date) as writer:
        writer.write(events)
