"""The ``.spq`` file format: an exported integer model on disk, readable and writable without torch.

The file is the safetensors layout (8-byte little-endian header length, a JSON header, raw little-endian tensor
bytes), written without the safetensors package and loadable by it. Since version 4 the header is compact:

* every integer tensor is stored at the narrowest integer dtype that holds its values (``U8``, ``I8``, ``U16``,
  ``I16``, ``U32``, ``I32``, ``I64``; e.g. a fixed-point shift in one byte, a 31-bit multiplier in four), and the
  reader widens it back to the dtype it was written with (int64 for the fixed-point maps), so a runtime sees the
  arrays the exporter produced;
* the tensors are concatenated, flat, into one safetensors tensor per stored dtype, named by the dtype (``I64``,
  ``F32``, ``U8``, ..., widest first so every tensor is naturally aligned): a fixed handful of header entries
  instead of one per tensor;
* the header's ``__metadata__`` holds ``format`` and ``version`` (plain strings, so any version of the reader can
  refuse a file it does not read), ``spquant`` (the detector config with class names, and the layer graph of
  :mod:`models.networks.graph` whose nodes carry their integer attributes), ``tensors`` (the index: per stored dtype,
  its tensors in order as ``[name, shape]`` or ``[name, shape, written dtype]``) — both JSON, zlib-compressed,
  base64 (:func:`encode_metadata`) — and ``sha256`` over the rest of the header and the data, so a corrupt file is
  refused.

Conv weights are stored packed at their bit width (two's complement, little-endian bit order): :func:`pack_codes` /
:func:`unpack_codes`. See :mod:`models.inference.export` for what the tensors mean (the folding, which needs torch).

Versions: 4 = compact constants (narrowest integer dtypes) and header (one tensor per dtype, compressed metadata),
and the export's integer Detect head; 3 = the layer graph with per-node attributes; 2 = a packed fake-quantized head;
1 = a float32 head. A version-4 file may also hold ``gated_conv`` nodes (channel gates, added without a version bump:
files without them are unchanged, and a reader that predates the kind refuses such a file as an unknown node kind);
their gate codes are the tensors ``<node>.gate.weight`` (int8 ``[Cout, Cin]``) and ``<node>.gate.bias`` (``[Cout]``).
The reader takes its own version only and refuses any other with a hint (re-export an older
file from its checkpoint; a newer one needs a newer spquant).

numpy only: the torch-free runtime (:mod:`models.inference.numpy_runtime`) and the serving path read models with it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "spquant-integer"
VERSION = 4  # the history is in the module docstring
FRAC_BITS = 24  # fixed-point fraction of currents and membranes
_MAX_HEADER = 64 << 20
_DTYPES = {"U8": np.uint8, "I8": np.int8, "U16": np.uint16, "I16": np.int16, "U32": np.uint32, "I32": np.int32,
           "I64": np.int64, "F32": np.float32}
_DTYPE_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
_NARROW = tuple(np.dtype(_DTYPES[k]) for k in ("U8", "I8", "U16", "I16", "U32", "I32", "I64"))  # by size


class ExportFormatError(ValueError):
    """A model that cannot be exported, or a ``.spq`` file that cannot be read (foreign, corrupt, other version)."""


# ---------------------------------------------------------------------------------------------------- weight packing


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Signed integer codes → ``ceil(n·bits/8)`` bytes (``bits``-bit two's complement, little-endian bit order)."""
    flat = codes.astype(np.int64).ravel()
    top = 1 << (bits - 1)
    if flat.size and (flat.min() < -top or flat.max() >= top):
        raise ExportFormatError(f"weight codes [{flat.min()}, {flat.max()}] do not fit in {bits} bits")
    planes = ((flat & ((1 << bits) - 1))[:, None] >> np.arange(bits)) & 1  # [n, bits]
    return np.packbits(planes.astype(np.uint8).ravel(), bitorder="little")


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``count`` int8 codes."""
    if packed.size * 8 < count * bits:
        raise ExportFormatError(f"{packed.size} packed bytes hold fewer than {count} codes of {bits} bits")
    planes = np.unpackbits(packed, count=count * bits, bitorder="little").reshape(count, bits).astype(np.int64)
    values = planes @ (1 << np.arange(bits))
    return np.where(values >= 1 << (bits - 1), values - (1 << bits), values).astype(np.int8)


def conv_codes(tensors: dict[str, np.ndarray], name: str, spec: dict[str, Any]) -> np.ndarray:
    """The int8 weight codes ``[Cout, Cin, k, k]`` of the integer conv ``name`` (its node attributes: ``spec``)."""
    shape = (spec["out_channels"], spec["in_channels"], *spec["kernel"])
    return unpack_codes(tensors[f"{name}.weight"], spec["bits"], int(np.prod(shape))).reshape(shape)


def head_weight(tensors: dict[str, np.ndarray], key: str, packed: dict[str, Any]) -> np.ndarray:
    """The float32 weight stored under ``head.<key>``: for a fake-quantized conv listed in ``packed``, its
    ``codes × scale`` (the product the fake-quant forward forms), else as stored."""
    if key not in packed:
        return tensors[f"head.{key}"].astype(np.float32)
    spec = packed[key]
    shape, scale = spec["shape"], tensors[f"head.{key.removesuffix('.weight')}.scale"]
    if scale.shape != (shape[0],):
        raise ValueError(f"head.{key}: {tuple(scale.shape)} scales for {shape[0]} output channels")
    codes = unpack_codes(tensors[f"head.{key}"], spec["bits"], int(np.prod(shape))).reshape(shape)
    return codes.astype(np.float32) * scale.astype(np.float32).reshape(-1, 1, 1, 1)  # [Cout, Cin, k, k]


# ------------------------------------------------------------------------------------------------------ file format


def narrowest_dtype(array: np.ndarray) -> np.dtype:
    """The smallest integer dtype that holds every value of an integer ``array`` (its own dtype when empty or not
    an integer array): what the writer stores it as."""
    if array.dtype.kind not in "iu" or array.size == 0:
        return array.dtype
    low, high = int(array.min()), int(array.max())
    return next(d for d in _NARROW if np.iinfo(d).min <= low and high <= np.iinfo(d).max)


def stored_nbytes(tensors: dict[str, np.ndarray]) -> int:
    """Bytes ``tensors`` take in a ``.spq`` file's data section (integers at their narrowest dtype): what a runtime
    reports as its weights as stored, whether it read them from a file or folded them in memory."""
    return sum(np.asarray(v).size * narrowest_dtype(np.asarray(v)).itemsize for v in tensors.values())


def encode_metadata(value: Any) -> str:
    """``value`` as a header string: canonical JSON, zlib-compressed, base64 (what :func:`decode_metadata` reads)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    return base64.b64encode(zlib.compress(text, 9)).decode("ascii")


def decode_metadata(text: str) -> Any:
    """Inverse of :func:`encode_metadata`; ValueError when ``text`` is not such a string."""
    try:
        return json.loads(zlib.decompress(base64.b64decode(text, validate=True)))
    except (binascii.Error, zlib.error, TypeError) as exc:
        raise ValueError(f"not an encoded metadata string ({exc})") from exc


def _canonical(header: dict[str, Any]) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def write_spq(path: str | os.PathLike[str], meta: dict[str, Any], tensors: dict[str, np.ndarray]) -> Path:
    """Write ``meta`` and ``tensors`` in the safetensors layout with a format tag, version and checksum (integers at
    their narrowest dtype, one safetensors tensor per stored dtype; see the module docstring)."""
    path = Path(path)
    chunks: dict[str, list[bytes]] = {}
    index: dict[str, list[list[Any]]] = {}
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        if array.dtype not in _DTYPE_NAMES:
            raise ExportFormatError(f"tensor {name} has unsupported dtype {array.dtype}")
        stored = narrowest_dtype(array)
        code = _DTYPE_NAMES[stored]
        entry = [name, list(array.shape)] + ([_DTYPE_NAMES[array.dtype]] if stored != array.dtype else [])
        index.setdefault(code, []).append(entry)
        chunks.setdefault(code, []).append(array.astype(stored.newbyteorder("<")).tobytes(order="C"))
    header: dict[str, Any] = {}
    blobs, offset = [], 0
    for code in sorted(chunks, key=lambda c: (-np.dtype(_DTYPES[c]).itemsize, c)):  # widest first: aligned
        blob = b"".join(chunks[code])
        header[code] = {"dtype": code, "shape": [len(blob) // np.dtype(_DTYPES[code]).itemsize],
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    data = b"".join(blobs)
    header["__metadata__"] = {"format": FORMAT, "version": str(VERSION), "spquant": encode_metadata(meta),
                              "tensors": encode_metadata(index)}
    header["__metadata__"]["sha256"] = hashlib.sha256(_canonical(header) + data).hexdigest()
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it private (0600): a model is served by other users, e.g. a container's
        with os.fdopen(fd, "wb") as out:
            out.write(struct.pack("<Q", len(raw)) + raw + data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def is_spq(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` starts like a safetensors file (8-byte header length, then ``{``); cheap, reads 9 bytes."""
    with open(path, "rb") as file:
        head = file.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < struct.unpack("<Q", head[:8])[0] < _MAX_HEADER


def header_nbytes(path: str | os.PathLike[str]) -> int:
    """Bytes of ``path`` before its tensor data: the 8-byte length and the JSON header (padding included)."""
    with open(path, "rb") as file:
        head = file.read(8)
    if len(head) < 8:
        raise ExportFormatError(f"{path}: not a spquant integer model (file too short)")
    return 8 + struct.unpack("<Q", head)[0]


def read_spq(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The description and tensors of a ``.spq`` file, after checking format, version and checksum; every tensor
    comes back in the dtype it was written with (narrow integers widened).

    Raises:
        FileNotFoundError: no such file.
        ExportFormatError: not a spquant integer model, another format version, truncated or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such exported model: {path}")
    blob = path.read_bytes()
    if len(blob) < 8:
        raise ExportFormatError(f"{path}: not a spquant integer model (file too short)")
    (size,) = struct.unpack("<Q", blob[:8])
    if not 0 < size <= min(len(blob) - 8, _MAX_HEADER):
        raise ExportFormatError(f"{path}: not a spquant integer model (bad header length; truncated or foreign)")
    try:
        header = json.loads(blob[8:8 + size])
        metadata = header["__metadata__"]
        found_format, found_version = metadata["format"], metadata["version"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportFormatError(f"{path}: not a spquant integer model (unreadable header: {exc})") from exc
    if found_format != FORMAT:
        raise ExportFormatError(f"{path}: not a spquant integer model (format {found_format!r})")
    if found_version != str(VERSION):
        newer = str(found_version).isdigit() and int(found_version) > VERSION
        hint = ("written by a newer spquant: upgrade spquant to read it" if newer
                else "re-export it from its checkpoint with `spquant export`")
        raise ExportFormatError(f"{path}: integer model format version {found_version}; this spquant reads version "
                                f"{VERSION} ({hint})")
    data = blob[8 + size:]
    expected = metadata.pop("sha256", None)
    if hashlib.sha256(_canonical(header) + data).hexdigest() != expected:
        raise ExportFormatError(f"{path}: checksum mismatch: the file is corrupt or was modified")
    try:
        return decode_metadata(metadata["spquant"]), _tensors(header, decode_metadata(metadata["tensors"]), data)
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportFormatError(f"{path}: inconsistent integer model ({type(exc).__name__}: {exc})") from exc


def _tensors(header: dict[str, Any], index: dict[str, list[list[Any]]], data: bytes) -> dict[str, np.ndarray]:
    """The named tensors of the per-dtype blobs of ``header``, cut as ``index`` says and widened to their dtypes."""
    blobs = set(header) - {"__metadata__"}
    if set(index) != blobs:
        raise ValueError(f"the index lists dtypes {sorted(index)}, the file holds {sorted(blobs)}")
    tensors = {}
    for code, entries in index.items():
        info = header[code]
        if info["dtype"] != code:
            raise ValueError(f"blob {code} holds {info['dtype']}")
        begin, end = info["data_offsets"]
        values = np.frombuffer(data[begin:end], dtype=np.dtype(_DTYPES[code]).newbyteorder("<"))
        position = 0
        for name, shape, *written in entries:
            count = math.prod(shape)
            if position + count > values.size:
                raise ValueError(f"tensor {name}: blob {code} ends before its {count} values")
            dtype = np.dtype(_DTYPES[written[0]] if written else _DTYPES[code])
            tensors[name] = values[position:position + count].astype(dtype).reshape(shape)
            position += count
        if position != values.size:
            raise ValueError(f"blob {code} holds {values.size - position} values no tensor claims")
    return tensors
