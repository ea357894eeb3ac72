"""Open any supported recording by its content: Prophesee DAT or RAW (EVT 2.0 / 3.0)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from data.errors import RecordingFormatError
from data.formats.dat import DatRecording
from data.formats.header import read_header
from data.formats.raw import RawRecording, raw_encoding, raw_geometry

_NPY_MAGIC = b"\x93NUMPY"


class Recording(Protocol):
    """What every reader offers: geometry, format name, streamed chunks and time-range reads."""

    path: Path
    format: str
    width: int | None
    height: int | None

    def iter_chunks(self, t0: int | None = None, t1: int | None = None) -> Iterator[np.ndarray]: ...

    def read(self, t0: int | None = None, t1: int | None = None) -> np.ndarray: ...


def open_recording(
    path: str | os.PathLike[str], width: int | None = None, height: int | None = None
) -> DatRecording | RawRecording:
    """Open ``path`` with the reader its content calls for (the extension is only a tie-breaker).

    ``width``/``height`` override the geometry from the header. Raises :class:`RecordingFormatError` for truncated,
    empty-header or foreign files (including label ``.npy`` files, images and text).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a recording")
    with open(path, "rb") as f:
        start = f.read(8)
        if start.startswith(_NPY_MAGIC):
            raise RecordingFormatError(f"{path}: this is a numpy .npy file (box labels?), not an event recording")
        header = read_header(f, str(path))
    if header.lines:
        try:
            is_raw = raw_encoding(header) is not None
        except RecordingFormatError as exc:
            raise RecordingFormatError(f"{path}: {exc}") from exc
        return RawRecording(path, width, height) if is_raw else DatRecording(path, width, height)
    if path.suffix.lower() == ".dat" and start:
        # Headerless DAT files predate the '%' header and hold bare 8-byte records.
        return DatRecording(path, width, height)
    what = "empty file" if not start else "no Prophesee '%' header"
    raise RecordingFormatError(f"{path}: not a Prophesee DAT or RAW recording ({what})")


def header_geometry(recording: DatRecording | RawRecording) -> tuple[int, int] | None:
    """(width, height) as the file's header states it, or None when the header names no sensor size.

    The readers fall back to a default (Gen1 304×240 for DAT, nothing for RAW); callers that know better (the sensor a
    model was trained for) use this to tell a stated geometry from a fallback.
    """
    if isinstance(recording, RawRecording):
        return raw_geometry(recording.header)
    width, height = recording.header.get_int("width"), recording.header.get_int("height")
    return (width, height) if width and height else None

