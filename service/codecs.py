"""Event payloads in: DAT records, EVT 2.0/3.0 words, JSON columns and uploaded recording files.

Stream decoders take bytes of any size and alignment and keep partial records between calls, so a camera host can
forward whatever chunks it has.
"""

from __future__ import annotations

import numpy as np
from pydantic import ValidationError

from data.events import make_events
from data.formats.dat import DAT_RECORD, DatStreamDecoder, decode_dat_records
from data.formats.evt2 import Evt2Decoder
from data.formats.evt3 import Evt3Decoder
from service.errors import MalformedPayloadError
from service.schemas import EventColumns

StreamDecoder = DatStreamDecoder | Evt2Decoder | Evt3Decoder
ENCODINGS: dict[str, type[StreamDecoder]] = {"dat": DatStreamDecoder, "evt2": Evt2Decoder, "evt3": Evt3Decoder}
UPLOAD_SUFFIXES = (".dat", ".raw")


def stream_decoder(encoding: str) -> StreamDecoder:
    """A fresh incremental decoder for ``encoding`` (``dat``, ``evt2`` or ``evt3``)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; expected one of {sorted(ENCODINGS)}")
    return ENCODINGS[encoding]()


def decode_records(body: bytes) -> np.ndarray:
    """Events from a body of whole little-endian DAT records (8 bytes: uint32 t; uint32 x | y<<14 | p<<28)."""
    if len(body) % DAT_RECORD.itemsize:
        raise MalformedPayloadError(
            f"body of {len(body)} bytes is not a whole number of {DAT_RECORD.itemsize}-byte DAT records "
            f"({len(body) % DAT_RECORD.itemsize} trailing bytes)"
        )
    return decode_dat_records(np.frombuffer(body, dtype=DAT_RECORD))


def decode_columns(body: bytes) -> np.ndarray:
    """Events from a JSON object of columns ``{"t": [...], "x": [...], "y": [...], "p": [...]}``.

    Raises:
        MalformedPayloadError: the body is not JSON.
        pydantic.ValidationError: JSON of the wrong shape (missing or non-integer columns).
        EventValidationError: columns of different lengths or values outside the event dtype.
    """
    try:
        columns = EventColumns.model_validate_json(body)
    except ValidationError as exc:
        if any(error["type"] == "json_invalid" for error in exc.errors()):
            raise MalformedPayloadError(f"body is not valid JSON: {exc.errors()[0]['msg']}") from None
        raise
    return make_events(
        np.asarray(columns.t, dtype=np.int64), np.asarray(columns.x, dtype=np.int64),
        np.asarray(columns.y, dtype=np.int64), np.asarray(columns.p, dtype=np.int64),
    )
