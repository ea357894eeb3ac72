"""The ``%``-prefixed ASCII header shared by Prophesee DAT and RAW files."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO

from data.errors import RecordingFormatError

_MAX_HEADER_BYTES = 1 << 20


@dataclass(frozen=True)
class Header:
    """Parsed header: ``lines`` in file order, ``fields`` keyed by the first word, ``size`` in bytes."""

    lines: tuple[str, ...]
    fields: dict[str, str] = field(default_factory=dict)
    size: int = 0

    def get_int(self, *keys: str) -> int | None:
        """The first of ``keys`` present whose value parses as a positive integer, else None."""
        for key in keys:
            value = self.fields.get(key.lower())
            if value is not None and value.strip().isdigit() and int(value) > 0:
                return int(value)
        return None


def _is_header_line(line: bytes) -> bool:
    # A header line is printable ASCII after '%' and ends in a newline; binary data that happens to start with
    # 0x25 almost never satisfies all three.
    if not line.startswith(b"%") or not line.endswith(b"\n"):
        return False
    body = line[1:-1].rstrip(b"\r")
    return all(32 <= b < 127 or b == 9 for b in body)


def read_header(f: BinaryIO, path: str = "") -> Header:
    """Read the header at the start of ``f`` and leave ``f`` positioned at the first byte after it."""
    f.seek(0)
    lines: list[str] = []
    fields: dict[str, str] = {}
    pos = 0
    while True:
        line = f.readline(4096)
        if not _is_header_line(line):
            break
        pos += len(line)
        if pos > _MAX_HEADER_BYTES:
            raise RecordingFormatError(f"{path}: header longer than {_MAX_HEADER_BYTES} bytes; not a Prophesee file")
        text = line[1:].decode("ascii").strip()
        lines.append(text)
        if text == "end":
            break
        key, _, value = text.partition(" ")
        if key:
            fields.setdefault(key.lower(), value.strip())
    f.seek(pos)
    return Header(tuple(lines), fields, pos)
