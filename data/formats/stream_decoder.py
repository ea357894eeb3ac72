"""The shared shape of incremental decoders: bytes of any size and alignment in, events out.

A trailing partial word (or record) is held back and joined with the next chunk; subclasses decode whole words.
"""

from __future__ import annotations

import numpy as np


class StreamDecoder:
    """Base of the DAT, EVT 2.0 and EVT 3.0 stream decoders (``word_dtype`` sets the unit of the byte stream)."""

    word_dtype: np.dtype

    def __init__(self) -> None:
        self._pending = b""
        self._dropped = 0

    @property
    def word_bytes(self) -> int:
        """Size of one word (or record) of the encoding in bytes."""
        return np.dtype(self.word_dtype).itemsize

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete trailing word held back for the next chunk."""
        return len(self._pending)

    @property
    def dropped(self) -> int:
        """Events dropped so far because their time or address was not yet known."""
        return self._dropped

    def decode(self, chunk: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
        """Decode the next chunk of the byte stream into events."""
        if self._pending:
            chunk = self._pending + bytes(chunk)
        data = np.frombuffer(chunk, dtype=np.uint8)  # a view: no copy of the caller's buffer
        usable = len(data) - len(data) % self.word_bytes
        self._pending = data[usable:].tobytes()
        return self._decode_words(data[:usable].view(self.word_dtype))

    def _decode_words(self, words: np.ndarray) -> np.ndarray:
        raise NotImplementedError
