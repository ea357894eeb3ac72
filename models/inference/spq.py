"""The ``.spq`` file format: an exported integer model on disk, readable and writable without torch.

The file is the safetensors layout (8-byte little-endian header length, a JSON header, raw little-endian tensor
bytes), written without the safetensors package and loadable by it. The header's ``__metadata__`` holds ``format``,
``version``, ``spquant`` (JSON: the detector config with class names, and the layer graph of
:mod:`models.networks.graph` whose nodes carry their integer attributes) and ``sha256`` over the rest of the header
and the data, so a corrupt file is refused. Conv weights are stored packed at their bit width (two's complement,
little-endian bit order): :func:`pack_codes` / :func:`unpack_codes`. See :mod:`models.inference.export` for what the
tensors mean (the folding, which needs torch) and the version history.

numpy only: the torch-free runtime (:mod:`models.inference.numpy_runtime`) and the serving path read models with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "spquant-integer"
VERSION = 3  # 3: the layer graph with per-node attributes; 2: packed fake-quantized head; 1: float32 head
FRAC_BITS = 24  # fixed-point fraction of currents and membranes
_MAX_HEADER = 64 << 20
_DTYPES = {"U8": np.uint8, "I8": np.int8, "I32": np.int32, "I64": np.int64, "F32": np.float32}
_DTYPE_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


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


def _canonical(header: dict[str, Any]) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def write_spq(path: str | os.PathLike[str], meta: dict[str, Any], tensors: dict[str, np.ndarray]) -> Path:
    """Write ``meta`` and ``tensors`` in the safetensors layout with a format tag, version and checksum."""
    path = Path(path)
    header: dict[str, Any] = {}
    chunks, offset = [], 0
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        if array.dtype not in _DTYPE_NAMES:
            raise ExportFormatError(f"tensor {name} has unsupported dtype {array.dtype}")
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(order="C")
        header[name] = {"dtype": _DTYPE_NAMES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    data = b"".join(chunks)
    header["__metadata__"] = {"format": FORMAT, "version": str(VERSION), "spquant": json.dumps(meta, sort_keys=True)}
    header["__metadata__"]["sha256"] = hashlib.sha256(_canonical(header) + data).hexdigest()
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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


def read_spq(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The description and tensors of a ``.spq`` file, after checking format, version and checksum.

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
        raise ExportFormatError(f"{path}: integer model format version {found_version}; this spquant reads version "
                                f"{VERSION} (re-export it with `spquant export`)")
    data = blob[8 + size:]
    expected = metadata.pop("sha256", None)
    if hashlib.sha256(_canonical(header) + data).hexdigest() != expected:
        raise ExportFormatError(f"{path}: checksum mismatch: the file is corrupt or was modified")
    try:
        tensors = {}
        for name, info in header.items():
            if name != "__metadata__":
                begin, end = info["data_offsets"]
                array = np.frombuffer(data[begin:end], dtype=np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<"))
                tensors[name] = array.astype(array.dtype.newbyteorder("="), copy=True).reshape(info["shape"])
        return json.loads(metadata["spquant"]), tensors
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportFormatError(f"{path}: inconsistent integer model ({type(exc).__name__}: {exc})") from exc
