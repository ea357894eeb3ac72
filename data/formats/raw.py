"""Prophesee RAW files (``.raw``, what Metavision cameras record): header, encoding and geometry, streamed decoding."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from data.errors import RecordingFormatError
from data.events import concat_events, empty_events, validate_events
from data.formats.evt2 import Evt2Decoder, encode_evt2
from data.formats.evt3 import Evt3Decoder, encode_evt3
from data.formats.header import Header, read_header
from data.formats.stream_decoder import StreamDecoder

DECODERS: dict[str, type[StreamDecoder]] = {"evt2": Evt2Decoder, "evt3": Evt3Decoder}
_ENCODERS = {"evt2": encode_evt2, "evt3": encode_evt3}
_WHOLE_FILE_BYTES = 1 << 30  # read() decodes files up to this size in one pass
# Sensor geometry implied by the HAL plugin when the header has no geometry (most specific name first).
_PLUGIN_GEOMETRY = (
    ("gen41", (1280, 720)),
    ("imx636", (1280, 720)),
    ("gen31", (640, 480)),
    ("gen3", (640, 480)),
    ("genx320", (320, 320)),
)


def raw_encoding(header: Header) -> str | None:
    """``"evt2"`` / ``"evt3"`` from ``% evt 3.0`` or ``% format EVT3;...`` lines, None when absent."""
    fmt = header.fields.get("format", "").split(";")[0].strip().upper()
    version = header.fields.get("evt", "").strip()
    if fmt in ("EVT3", "EVT3.0") or version in ("3", "3.0"):
        return "evt3"
    if fmt in ("EVT2", "EVT2.0") or version in ("2", "2.0"):
        return "evt2"
    if fmt or version:
        raise RecordingFormatError(
            f"unsupported RAW encoding {fmt or 'evt ' + version!r} (supported: EVT 2.0, EVT 3.0)"
        )
    return None


def raw_geometry(header: Header) -> tuple[int, int] | None:
    """(width, height) from ``% geometry WxH``, the ``format`` line's ``width=``/``height=``, or the plugin name."""
    match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", header.fields.get("geometry", ""))
    if match:
        return int(match[1]), int(match[2])
    options = dict(part.split("=", 1) for part in header.fields.get("format", "").split(";")[1:] if "=" in part)
    if options.get("width", "").isdigit() and options.get("height", "").isdigit():
        return int(options["width"]), int(options["height"])
    plugin = header.fields.get("plugin_name", "").lower()
    return next((size for name, size in _PLUGIN_GEOMETRY if name in plugin), None)


class RawRecording:
    """A RAW EVT 2.0 / 3.0 file, decoded in streamed chunks (never loaded whole)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        width: int | None = None,
        height: int | None = None,
        encoding: str | None = None,
    ) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            self.header: Header = read_header(f, str(self.path))
        try:
            found = raw_encoding(self.header)
        except RecordingFormatError as exc:
            raise RecordingFormatError(f"{self.path}: {exc}") from exc
        self.format = encoding or found
        if self.format not in DECODERS:
            raise RecordingFormatError(
                f"{self.path}: RAW file without a known encoding in its header (expected '% evt 2.0', '% evt 3.0' "
                f"or '% format EVT2/EVT3'); pass the encoding explicitly"
            )
        self.data_offset = self.header.size
        payload = self.path.stat().st_size - self.data_offset
        word = DECODERS[self.format].word_dtype.itemsize
        if payload % word:
            raise RecordingFormatError(
                f"{self.path}: truncated {self.format.upper()} file ({payload % word} trailing bytes after the last "
                f"whole {word}-byte word)"
            )
        geometry = raw_geometry(self.header)
        self.width = width or (geometry[0] if geometry else None)
        self.height = height or (geometry[1] if geometry else None)

    def iter_chunks(
        self, t0: int | None = None, t1: int | None = None, chunk_bytes: int = 1 << 24
    ) -> Iterator[np.ndarray]:
        """Yield the events with ``t0 <= t < t1``, decoded chunk by chunk from the start of the file.

        Decoding stops at the first chunk past ``t1``; empty chunks are skipped.
        """
        decoder = DECODERS[self.format]()
        with open(self.path, "rb") as f:
            f.seek(self.data_offset)
            while block := f.read(chunk_bytes):
                events = decoder.decode(block)
                if not len(events):
                    continue
                if t1 is not None and events["t"][0] >= t1:
                    return
                lo = 0 if t0 is None else int(np.searchsorted(events["t"], t0, "left"))
                hi = len(events) if t1 is None else int(np.searchsorted(events["t"], t1, "left"))
                if hi > lo:
                    yield events[lo:hi]

    def read(self, t0: int | None = None, t1: int | None = None) -> np.ndarray:
        """Events with ``t0 <= t < t1`` (either bound may be None for open)."""
        if t1 is None and 0 < self.path.stat().st_size - self.data_offset <= _WHOLE_FILE_BYTES:
            # One pass over a memory map: no chunk copies and a single output allocation.
            payload = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.data_offset)
            events = DECODERS[self.format]().decode(payload)
            return events if t0 is None else events[int(np.searchsorted(events["t"], t0, "left")) :]
        parts = list(self.iter_chunks(t0, t1))
        return concat_events(parts) if parts else empty_events()


def write_raw(
    path: str | os.PathLike[str], events: np.ndarray, encoding: str = "evt3", width: int = 304, height: int = 240
) -> None:
    """Write events to a RAW file with a Metavision-style header (used by tests, demos and stream clients)."""
    if encoding not in _ENCODERS:
        raise ValueError(f"encoding must be one of {sorted(_ENCODERS)}, got {encoding!r}")
    validate_events(events, width, height)
    version = encoding[-1] + ".0"
    header = (
        f"% evt {version}\n% format {encoding.upper()};height={height};width={width}\n"
        f"% geometry {width}x{height}\n% integrator_name spquant\n% end\n"
    )
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(_ENCODERS[encoding](events))
