"""Integer-only export: BN and θ folded into integer weights and fixed-point scales, written as a ``.spq`` file.

The integer arithmetic (``F`` = :data:`FRAC_BITS` fractional bits; ``Q(F)`` means ``value · 2^F`` as an int64):

* A conv reads integers (event counts or binary spikes) with integer weight codes, so its accumulator
  ``acc = Σ w·x`` is an exact integer (|acc| < 2^24, checked here).
* Its weight scale, BN and — where one LIF reads it directly — that LIF's ``1/θ`` fold into one per-channel
  fixed-point affine map ``(M, s, R)``: ``Y = (acc·M + R) >> s`` with ``M`` normalised to 31 bits, which is
  ``round((a·acc + b)·2^F)`` for the float ``a, b`` of fake-quant + BN (half a unit of ``2^-F`` off at most, plus
  the 2^-31 relative rounding of ``M``; int64 intermediates are bounded from the weights, so never overflow).
* Every other current (the membrane-shortcut residual stream, the FPN sums, a conv read by more than one layer)
  stays in real units ``Q(F)``; currents add as plain integers, and each LIF that reads one rescales by its own
  ``1/θ`` map ``(M, s, R)``.
* The LIF runs in θ units ``Q(F)``: ``u = C + (m << leak_shift)`` (λ·step is a power of two: a shift),
  spike ``u > 2^F``, reset, then ``m = (clamp(u, lb, ub) + half) >> step_shift`` — round half up, as the float model.

The ``.spq`` file (read and written by :mod:`models.inference.spq`, numpy only) is the safetensors layout (8-byte
little-endian header length, a JSON header, raw little-endian tensor bytes), written without the safetensors package
and loadable by it. The header's ``__metadata__`` holds ``format``, ``version``, ``spquant`` (JSON: the detector
config with class names, and the layer graph of :mod:`models.networks.graph` whose nodes carry their integer
attributes: conv geometry, bits and output units, LIF grid and shifts, the head's strides and packed weights) and
``sha256`` over the rest of the header and the data, so a corrupt file is refused. Conv weights are stored packed at
their bit width (two's complement, little-endian bit order). The ultralytics Detect head runs in float32: its BN and
bias tensors are stored as float32; its conv weights too when ``head_bits`` is 32, else (a fake-quantized head) as
packed codes at ``head_bits`` plus a float32 scale per output channel (the ``detect`` node's ``head_weights`` lists
them), from which the loader rebuilds the fake-quantized weights ``codes × scale`` without re-quantizing them (the
forward's ``w + (codes × scale − w)``, bit for bit, but for an ulp on some ternary weights).

Versions: 3 stores the layer graph; 2 stored hand-written per-layer tables and a fixed block layout, with a
fake-quantized head packed; version 1 stored that head as raw float32 weights. A reader takes its own
version only and refuses any other with a hint to re-export (the checkpoint is the source of truth).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.inference.spq import (  # the torch-free file format; its names stay importable from here
    FORMAT,
    FRAC_BITS,
    VERSION,
    ExportFormatError,
    is_spq,
    pack_codes,
    read_spq,
    unpack_codes,
    write_spq,
)
from models.networks.blocks import ConvBN
from models.networks.detector import SpikingYOLO
from models.networks.graph import Graph, Node, conv_spec
from models.networks.neuron import IntegerLIF
from models.networks.quant import QuantConv2d, weight_codes

__all__ = ["FORMAT", "FRAC_BITS", "MULT_BITS", "VERSION", "ExportFormatError", "export_model", "fixed_point", "fold",
           "is_spq", "pack_codes", "read_spq", "unpack_codes", "write_spq"]

MULT_BITS = 31  # multipliers are normalised to [2^30, 2^31)
_FLOAT_EXACT = 2**24  # integers below this are exact in float32, so a float32 conv of integers is integer arithmetic


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
    """Folds the nodes of a :class:`SpikingYOLO`'s graph in order, tracking value bounds (so int64 never overflows).

    ``attrs`` collects each node's exported description, ``tensors`` its constants; ``bounds`` holds, per node, the
    bound of ``|value|`` per channel (real units for currents, 1 for spikes, the cutoff for the input).
    """

    def __init__(self, graph: Graph, cutoff: int) -> None:
        self.graph = graph
        self.attrs: dict[str, dict[str, Any]] = {}
        self.tensors: dict[str, np.ndarray] = {}
        self.bounds: dict[str, Any] = {graph.nodes[0].name: float(cutoff)}

    def conv(self, node: Node) -> None:
        """A ConvBN reading integers in ``[0, bound of its input]``. Where one LIF alone reads it, that LIF's
        ``1/θ`` folds into the map (output in θ units); otherwise the output is a real-valued current."""
        readers = self.graph.readers(node.name)
        theta = _theta(readers[0].module) if len(readers) == 1 and readers[0].kind == "lif" else None
        in_max = float(np.max(self.bounds[node.inputs[0]]))
        codes, a, b, bits = _bn_affine(node.module)
        if theta is not None:
            a, b = a / theta, b / theta
        acc_bound = np.abs(codes.astype(np.int64)).reshape(len(codes), -1).sum(1) * in_max  # [Cout]
        if acc_bound.max(initial=0) >= _FLOAT_EXACT:
            raise ExportFormatError(f"{node.name}: accumulator bound {acc_bound.max()} exceeds 2^24")
        one = 2.0**FRAC_BITS
        maps = fixed_point(a * one, b * one, acc_bound, node.name)
        self.tensors.update({f"{node.name}.{k}": v for k, v in maps.items()})
        self.tensors[f"{node.name}.weight"] = pack_codes(codes, bits)
        self.attrs[node.name] = {**conv_spec(node), "output": "real" if theta is None else "theta"}
        self.bounds[node.name] = np.abs(a) * acc_bound + np.abs(b)

    def lif(self, node: Node) -> None:
        """A LIF fed by a θ-folded conv reads that conv's map; one reading a shared real-valued current (a residual
        stream, an FPN sum) gets its own ``1/θ`` map."""
        lif, source = node.module, self.graph[node.inputs[0]]
        cfg = lif.config
        if not cfg.quantize_membrane:
            raise ExportFormatError("integer export needs quantized membranes (the spquant variant)")
        grid = lif.grid
        step_exp = _power_of_two_exponent(grid.step, "the membrane step")
        folded = source.kind == "conv" and self.attrs[source.name]["output"] == "theta"
        entry: dict[str, Any] = {
            "channels": lif.channels, "input": "conv" if folded else "stream", "reset": cfg.reset,
            "code_min": grid.code_min, "code_max": grid.code_max, "step_shift": FRAC_BITS - step_exp,
            "leak_shift": None if cfg.leak == 0 else FRAC_BITS - step_exp - _power_of_two_exponent(cfg.leak, "λ"),
        }
        if entry["step_shift"] < 1 or (entry["leak_shift"] is not None and entry["leak_shift"] < 0):
            raise ExportFormatError(f"{node.name}: membrane step or leak too fine for {FRAC_BITS} fractional bits")
        if not folded:
            theta = _theta(lif)
            bound = np.broadcast_to(self.bounds[source.name], theta.shape) * 2.0**FRAC_BITS + 1
            maps = fixed_point(1 / theta, np.zeros_like(theta), bound, node.name)
            self.tensors.update({f"{node.name}.{k}": v for k, v in maps.items()})
        self.attrs[node.name] = entry
        self.bounds[node.name] = 1.0  # spikes

    def add(self, node: Node) -> None:
        """Integer currents add exactly; the bounds add."""
        self.bounds[node.name] = sum(self.bounds[name] for name in node.inputs)

    def upsample_add(self, node: Node) -> None:
        """A nearest upsample keeps the bound."""
        self.add(node)

    def rate(self, node: Node) -> None:
        """Firing rates are float in [0, 1]: nothing to fold."""
        self.bounds[node.name] = 1.0

    def detect(self, node: Node) -> None:
        """The Detect head's ``head_weights`` description and ``head.*`` tensors (see :func:`_head`)."""
        head_weights, head_tensors = _head(node.module)
        self.tensors.update(head_tensors)
        self.attrs[node.name] = {"strides": [int(s) for s in node.module.stride.tolist()],
                                 "head_weights": head_weights}


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
    """The exported description (JSON-able) and tensors of ``model``: its layer graph, node by node, with every
    node's integer attributes; shapes come from the modules themselves."""
    cfg = model.config
    if not cfg.quantized:
        raise ExportFormatError(f"integer export needs a quantized (spquant) model, got variant {cfg.variant!r}")
    model = model.eval()
    folder = _Folder(model.graph, cfg.cutoff)
    with torch.no_grad():
        for node in model.graph.nodes[1:]:
            getattr(folder, node.kind)(node)
    meta = {
        "detector": {**cfg.to_dict(), "class_names": list(cfg.class_names)},
        "frac_bits": FRAC_BITS,
        "graph": model.graph.with_attrs(folder.attrs).describe(),
    }
    return meta, folder.tensors


def export_model(model: SpikingYOLO, path: str | os.PathLike[str]) -> Path:
    """Fold ``model`` and write it to ``path`` (atomically); returns the path."""
    meta, tensors = fold(model)
    return write_spq(path, meta, tensors)
