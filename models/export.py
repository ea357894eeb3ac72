"""Integer-only export: BN and θ folded into integer weights and fixed-point scales, written as a ``.spq`` file.

The integer arithmetic (``F`` = :data:`FRAC_BITS` fractional bits; ``Q(F)`` means ``value · 2^F`` as an int64):

* A conv reads integers (event counts or binary spikes) with integer weight codes, so its accumulator
  ``acc = Σ w·x`` is an exact integer (|acc| < 2^24, checked here).
* Its weight scale, BN and — where one LIF reads it directly — that LIF's ``1/θ`` fold into one per-channel
  fixed-point affine map ``(M, s, R)``: ``Y = (acc·M + R) >> s`` with ``M`` normalised to 31 bits, which is
  ``round((a·acc + b)·2^F)`` for the float ``a, b`` of fake-quant + BN (half a unit of ``2^-F`` off at most, plus
  the 2^-31 relative rounding of ``M``; int64 intermediates are bounded from the weights, so never overflow).
* Currents read by more than one layer (the membrane-shortcut residual stream, the FPN sums) stay in real units
  ``Q(F)``; they add as plain integers, and each LIF that reads them rescales by its own ``1/θ`` map ``(M, s, R)``.
* The LIF runs in θ units ``Q(F)``: ``u = C + (m << leak_shift)`` (λ·step is a power of two: a shift),
  spike ``u > 2^F``, reset, then ``m = (clamp(u, lb, ub) + half) >> step_shift`` — round half up, as the float model.

The ``.spq`` file is the safetensors layout (8-byte little-endian header length, a JSON header, raw little-endian
tensor bytes), written without the safetensors package and loadable by it. The header's ``__metadata__`` holds
``format``, ``version``, ``spquant`` (JSON: detector config with class names, graph, per-layer shapes and
constants) and ``sha256`` over the rest of the header and the data, so a corrupt file is refused. Conv weights are
stored packed at their bit width (two's complement, little-endian bit order). The ultralytics Detect head runs in
float32: its BN and bias tensors are stored as float32; its conv weights too when ``head_bits`` is 32, else (a
fake-quantized head) as packed codes at ``head_bits`` plus a float32 scale per output channel (``head_weights`` in the
description lists them), from which the loader rebuilds the fake-quantized weights ``codes × scale`` without
re-quantizing them (the forward's ``w + (codes × scale − w)``, bit for bit, but for an ulp on some ternary weights).

Versions: 2 stores a fake-quantized head packed; version 1 stored it as raw float32 weights. A reader takes its own
version only and refuses any other with a hint to re-export (the checkpoint is the source of truth).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.blocks import ConvBN
from models.detector import SpikingYOLO
from models.neuron import IntegerLIF
from models.quant import QuantConv2d, weight_codes

FORMAT = "spquant-integer"
VERSION = 2  # 2: a fake-quantized Detect head as packed codes and scales (1: float32)
FRAC_BITS = 24  # fixed-point fraction of currents and membranes
MULT_BITS = 31  # multipliers are normalised to [2^30, 2^31)
_FLOAT_EXACT = 2**24  # integers below this are exact in float32, so a float32 conv of integers is integer arithmetic
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


# ------------------------------------------------------------------------------------------------------ fixed point


def fixed_point(factor: np.ndarray, offset: np.ndarray, in_bound: np.ndarray, name: str) -> dict[str, np.ndarray]:
    """Per-channel ``(M, s, R)`` with ``(x·M + R) >> s == round(x·factor + offset)`` up to ``M``'s rounding.

    ``factor`` and ``offset`` are in output integer units (float64 ``[C]``); ``in_bound`` bounds ``|x|`` per channel.
    ``M`` gets 31 significant bits where ``|x·M|`` and ``|R|`` stay below 2^61 that way, fewer where not (as long as
    the rounding of ``M`` stays within one output unit or 2^-20 of the output's range).
    """
    mult, shift, bias = (np.zeros(len(factor), dtype=np.int64) for _ in range(3))
    for c, (f, b, bound) in enumerate(zip(factor.tolist(), offset.tolist(), in_bound.tolist(), strict=True)):
        if not (math.isfinite(f) and math.isfinite(b)):
            raise ExportFormatError(f"{name}: channel {c} has a non-finite scale or bias ({f}, {b})")
        if f == 0:
            bias[c] = round(b)
            continue
        e = math.floor(math.log2(abs(f)))  # |f| in [2^e, 2^(e+1))
        s = min(MULT_BITS - 1 - e, 60 - e - math.ceil(math.log2(bound + 1)), 60 - math.ceil(math.log2(abs(b) + 1)))
        # M's rounding adds at most bound·2^-(s+1): allow one output unit or 2^-20 of the output's range
        if s < 0 or bound * 2.0 ** -(s + 1) > max(1.0, (bound * abs(f) + abs(b)) * 2.0**-20):
            raise ExportFormatError(f"{name}: channel {c} needs more dynamic range than int64 fixed point gives "
                                    f"(scale {f:.3g}, bias {b:.3g}, input bound {bound:.3g})")
        m = round(f * 2.0**s)
        r = round(b * 2.0**s) + (1 << (s - 1) if s else 0)  # + half: the shift then rounds half up
        mult[c], shift[c], bias[c] = m, s, r
    return {"multiplier": mult, "shift": shift, "bias": bias}


def _bn_affine(conv_bn: ConvBN) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Integer weight codes ``[Cout, Cin, k, k]``, and float64 ``a, b`` with ``BN(conv(x)) = a·acc + b`` per channel."""
    conv, bn = conv_bn.conv, conv_bn.bn
    if conv.quant.full_precision:
        raise ExportFormatError("integer export needs quantized weights (the spquant variant), got 32-bit weights")
    if conv.bias is not None or conv.groups != 1 or conv.dilation != (1, 1):
        raise ExportFormatError("integer export supports bias-free, ungrouped, undilated convs only")
    codes, scale = weight_codes(conv.weight, conv.quant)
    std = np.sqrt(bn.running_var.double().numpy() + bn.eps)
    gamma = bn.weight.detach().double().numpy() if bn.weight is not None else np.ones_like(std)
    beta = bn.bias.detach().double().numpy() if bn.bias is not None else np.zeros_like(std)
    a = scale.double().numpy() * gamma / std
    b = beta - bn.running_mean.double().numpy() * gamma / std
    return codes.numpy(), a, b, conv.quant.weight_bits


def _theta(lif: IntegerLIF) -> np.ndarray:
    """θ per channel, float64 ``[C]`` (the float32 value the fake-quant model divides by)."""
    theta = lif.threshold.detach().double().flatten().numpy()
    if lif.channels is None:
        raise ExportFormatError("integer export needs LIF layers that know their channel count")
    return np.broadcast_to(theta, (lif.channels,)).copy()


def _power_of_two_exponent(value: float, what: str) -> int:
    """``e`` with ``value == 2^-e`` (e >= 0), else an export error."""
    e = -math.log2(value) if value > 0 else math.inf
    if not (math.isfinite(e) and e == round(e) and e >= 0):
        raise ExportFormatError(f"integer export needs {what} to be 1 or 1/2^k (a shift), got {value}")
    return round(e)


class _Folder:
    """Walks a :class:`SpikingYOLO`, folding each layer and tracking value bounds (so int64 never overflows)."""

    def __init__(self) -> None:
        self.convs: dict[str, dict[str, Any]] = {}
        self.lifs: dict[str, dict[str, Any]] = {}
        self.tensors: dict[str, np.ndarray] = {}

    def conv(self, name: str, conv_bn: ConvBN, in_max: float, theta: np.ndarray | None = None) -> np.ndarray:
        """Fold a ConvBN reading integers in ``[0, in_max]``; output in θ units of a LIF (``theta``) or real units.

        Returns the bound of ``|output|`` per channel in real (or θ) units.
        """
        codes, a, b, bits = _bn_affine(conv_bn)
        if theta is not None:
            a, b = a / theta, b / theta
        acc_bound = np.abs(codes.astype(np.int64)).reshape(len(codes), -1).sum(1) * in_max  # [Cout]
        if acc_bound.max(initial=0) >= _FLOAT_EXACT:
            raise ExportFormatError(f"{name}: accumulator bound {acc_bound.max()} exceeds 2^24")
        one = 2.0**FRAC_BITS
        self.tensors.update({f"{name}.{k}": v for k, v in fixed_point(a * one, b * one, acc_bound, name).items()})
        self.tensors[f"{name}.weight"] = pack_codes(codes, bits)
        conv = conv_bn.conv
        self.convs[name] = {
            "in_channels": conv.in_channels, "out_channels": conv.out_channels, "kernel": list(conv.kernel_size),
            "stride": list(conv.stride), "padding": list(conv.padding), "bits": bits,
            "output": "real" if theta is None else "theta",
        }
        return np.abs(a) * acc_bound + np.abs(b)

    def lif(self, name: str, lif: IntegerLIF, stream_bound: np.ndarray | None = None) -> None:
        """Record a LIF; one reading a shared real-valued current (``stream_bound`` given) gets its ``1/θ`` map."""
        cfg = lif.config
        if not cfg.quantize_membrane:
            raise ExportFormatError("integer export needs quantized membranes (the spquant variant)")
        grid = lif.grid
        step_exp = _power_of_two_exponent(grid.step, "the membrane step")
        entry: dict[str, Any] = {
            "channels": lif.channels, "input": "conv" if stream_bound is None else "stream", "reset": cfg.reset,
            "code_min": grid.code_min, "code_max": grid.code_max, "step_shift": FRAC_BITS - step_exp,
            "leak_shift": None if cfg.leak == 0 else FRAC_BITS - step_exp - _power_of_two_exponent(cfg.leak, "λ"),
        }
        if entry["step_shift"] < 1 or (entry["leak_shift"] is not None and entry["leak_shift"] < 0):
            raise ExportFormatError(f"{name}: membrane step or leak too fine for {FRAC_BITS} fractional bits")
        if stream_bound is not None:
            theta = _theta(lif)
            bound = np.broadcast_to(stream_bound, theta.shape) * 2.0**FRAC_BITS + 1
            maps = fixed_point(1 / theta, np.zeros_like(theta), bound, name)
            self.tensors.update({f"{name}.{k}": v for k, v in maps.items()})
        self.lifs[name] = entry


def _head(head: nn.Module) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The Detect head's ``head_weights`` description and ``head.*`` tensors.

    A fake-quantized conv's weight ``[Cout, Cin, k, k]`` is stored as its packed integer codes (``head.<key>``) and
    float32 scales ``[Cout]`` (``head.<conv>.scale``), described by shape and bits under its state-dict key; every
    other tensor (BN, biases, full-precision weights) as float32.
    """
    tensors = {f"head.{k}": v.detach().cpu().numpy() for k, v in head.state_dict().items()}
    packed: dict[str, Any] = {}
    for name, conv in head.named_modules():
        if isinstance(conv, QuantConv2d) and not conv.quant.full_precision:
            codes, scale = weight_codes(conv.weight, conv.quant)
            bits = conv.quant.weight_bits
            tensors[f"head.{name}.weight"] = pack_codes(codes.numpy(), bits)
            tensors[f"head.{name}.scale"] = scale.to(torch.float32).numpy()
            packed[f"{name}.weight"] = {"shape": list(conv.weight.shape), "bits": bits}
    return packed, tensors


def fold(model: SpikingYOLO) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The exported description (JSON-able) and tensors of ``model``; shapes come from the modules themselves."""
    cfg = model.config
    if not cfg.quantized:
        raise ExportFormatError(f"integer export needs a quantized (spquant) model, got variant {cfg.variant!r}")
    model = model.eval()
    f = _Folder()
    bb = model.backbone
    with torch.no_grad():
        f.conv("backbone.stem1.conv_bn", bb.stem1.conv_bn, cfg.cutoff, _theta(bb.stem1.lif))
        f.lif("backbone.stem1.lif", bb.stem1.lif)
        bound = f.conv("backbone.stem2", bb.stem2, 1)
        stages = []
        for i, stage in enumerate(bb.stages):
            blocks = []
            for j, block in enumerate(stage):
                p = f"backbone.stages.{i}.{j}"
                f.lif(f"{p}.lif1", block.lif1, bound)
                f.conv(f"{p}.conv1", block.conv1, 1, _theta(block.lif2))
                f.lif(f"{p}.lif2", block.lif2)
                out = f.conv(f"{p}.conv2", block.conv2, 1)
                shortcut = None if block.shortcut is None else f"{p}.shortcut"
                bound = out + (bound if block.shortcut is None else f.conv(f"{p}.shortcut", block.shortcut, 1))
                blocks.append({"lif1": f"{p}.lif1", "conv1": f"{p}.conv1", "lif2": f"{p}.lif2", "conv2": f"{p}.conv2",
                               "shortcut": shortcut})
            stages.append(blocks)
            f.lif(f"neck.inputs.{i}", model.neck.inputs[i], bound)
        merged = [f.conv(f"neck.lateral.{i}", conv, 1) for i, conv in enumerate(model.neck.lateral)]
        for i in reversed(range(len(merged) - 1)):
            merged[i] = merged[i] + merged[i + 1]  # top-down sum (a nearest upsample keeps the bound)
        for i, lif in enumerate(model.neck.outputs):
            f.lif(f"neck.outputs.{i}", lif, merged[i])
        head = model.head
        head_weights, head_tensors = _head(head)
        f.tensors.update(head_tensors)
    levels = len(model.neck.lateral)
    meta = {
        "detector": {**cfg.to_dict(), "class_names": list(cfg.class_names)},
        "frac_bits": FRAC_BITS,
        "convs": f.convs,
        "lifs": f.lifs,
        "head_weights": head_weights,
        "graph": {
            "stem": {"conv": "backbone.stem1.conv_bn", "lif": "backbone.stem1.lif", "conv2": "backbone.stem2"},
            "stages": stages,
            "neck": {"inputs": [f"neck.inputs.{i}" for i in range(levels)],
                     "lateral": [f"neck.lateral.{i}" for i in range(levels)],
                     "outputs": [f"neck.outputs.{i}" for i in range(levels)]},
            "head": {"strides": [int(s) for s in head.stride.tolist()]},
        },
    }
    return meta, f.tensors


def export_model(model: SpikingYOLO, path: str | os.PathLike[str]) -> Path:
    """Fold ``model`` and write it to ``path`` (atomically); returns the path."""
    meta, tensors = fold(model)
    return write_spq(path, meta, tensors)


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
