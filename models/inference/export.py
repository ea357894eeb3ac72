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

* A gated conv (:mod:`models.networks.gates`) is θ-folded like any conv its one LIF reads; its gate's 8-bit codes
  are stored beside it, and the runtimes decide per window and stream ``Σ count·w + b·T·H·W > 0`` in int64, compute
  only the kept output channels and apply the map themselves (so a dropped channel's current is exactly 0): the
  LIF reads those θ-unit currents as they are (its ``input`` is ``gated``).

The ``.spq`` file (read and written by :mod:`models.inference.spq`, numpy only, which also holds the format's
version history) is the safetensors layout; its header carries the detector config and the layer graph of
:mod:`models.networks.graph` whose nodes carry their integer attributes (conv geometry, bits and output units, LIF
grid and shifts, the head's strides and ``head_weights``), and a checksum. Conv weights are stored packed at their
bit width (two's complement, little-endian bit order).

The ultralytics Detect head runs in float32 by default: its BN and bias tensors are stored as float32; its conv
weights too when ``head_bits`` is 32, else (a fake-quantized head) as packed codes at ``head_bits`` plus a float32
scale per output channel (the ``detect`` node's ``head_weights`` lists them by state-dict key with shape and bits),
from which the loader rebuilds the fake-quantized weights ``codes × scale`` without re-quantizing them (the
forward's ``w + (codes × scale − w)``, bit for bit, but for an ulp on some ternary weights).

A model with ``head_act_bits = b`` > 0 (every hidden Conv-BN-SiLU of the head ends in a ``QuantSiLU``: ``q(SiLU(q(z)))``
on one calibrated scale ``S`` per layer, ``q`` rounding half up to the codes ``-top..top``, ``top = 2^(b-1) - 1``)
exports an *integer head* (:func:`_integer_head`), integer up to its last two convs:

* each branch's first conv reads the level's spike counts ``k = rate · T`` (``1/T`` folds into its map), every later
  one the previous layer's activation codes, so each accumulator is an exact integer (|acc| < 2^24, checked here);
* weight scale, BN, the input's scale and ``1/S`` fold into a per-channel map ``(M, s, R)`` as above, now to the
  pre-activation code: ``z = clamp((acc·M + R) >> s, -top, top)`` (round half up, as the quantizer);
* the SiLU is a table of ``2^b - 1`` int8 entries, ``lut[z + top] = clamp(floor(SiLU(z·S)/S + 1/2), -top, top)``
  (float64 here): the next conv reads those codes;
* the two final 1×1 convs give float32 logits ``acc · scale + bias`` (``scale`` = weight scale × input scale); only
  they, the DFL softmax and the class sigmoid are float.

Its ``head_weights`` entries (one per conv weight, by state-dict key: ``cv2.{k}.{0,1}.conv.weight``,
``cv3.{k}.{0,1}.{0,1}.conv.weight``, ``cv{2,3}.{k}.2.weight``) give ``shape`` and ``bits``, and for the hidden layers
``act_bits`` (and ``input_steps`` = T where a layer reads the spike counts); its tensors, under ``head.<layer>``:
``conv.weight`` (packed codes), ``multiplier``, ``shift``, ``bias`` (int64 ``[C]``) and ``lut`` (int8) per hidden
layer, ``weight`` (packed codes), ``scale`` and ``bias`` (float32 ``[C]``) per final conv. No BN or DFL tensors.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.inference.numpy_detect import integer_branches
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
from models.networks.detector import DetectorConfig, SpikingYOLO
from models.networks.gates import GATE_BITS
from models.networks.graph import CONV_KINDS, Graph, Node, conv_spec
from models.networks.neuron import IntegerLIF
from models.networks.quant import QuantConv2d, QuantSiLU, weight_codes

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


def _bn(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """Float64 ``gain, offset`` ``[C]`` with ``bn(x) = gain·x + offset`` (eval mode: running statistics)."""
    std = np.sqrt(bn.running_var.double().numpy() + bn.eps)
    gamma = bn.weight.detach().double().numpy() if bn.weight is not None else np.ones_like(std)
    beta = bn.bias.detach().double().numpy() if bn.bias is not None else np.zeros_like(std)
    return gamma / std, beta - bn.running_mean.double().numpy() * gamma / std


def _bn_affine(conv_bn: ConvBN) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Integer weight codes ``[Cout, Cin, k, k]``, and float64 ``a, b`` with ``BN(conv(x)) = a·acc + b`` per channel."""
    conv = conv_bn.conv
    if conv.quant.full_precision:
        raise ExportFormatError("integer export needs quantized weights (the spquant variant), got 32-bit weights")
    if conv.bias is not None or conv.groups != 1 or conv.dilation != (1, 1):
        raise ExportFormatError("integer export supports bias-free, ungrouped, undilated convs only")
    codes, scale = weight_codes(conv.weight, conv.quant)
    gain, offset = _bn(conv_bn.bn)
    return codes.numpy(), scale.double().numpy() * gain, offset, conv.quant.weight_bits


def _accumulator_bound(codes: np.ndarray, in_bound: float, name: str) -> np.ndarray:
    """``max |Σ w·x|`` per output channel for inputs ``|x| <= in_bound`` (float64 ``[Cout]``); an export error where
    it reaches 2^24 (a float32 GEMM would no longer be exact)."""
    bound = np.abs(codes.astype(np.int64)).reshape(len(codes), -1).sum(1) * float(in_bound)
    if bound.max(initial=0) >= _FLOAT_EXACT:
        raise ExportFormatError(f"{name}: accumulator bound {bound.max():.0f} exceeds 2^24")
    return bound


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

    def __init__(self, graph: Graph, config: DetectorConfig) -> None:
        self.graph, self.config = graph, config
        self.attrs: dict[str, dict[str, Any]] = {}
        self.tensors: dict[str, np.ndarray] = {}
        self.bounds: dict[str, Any] = {graph.nodes[0].name: float(config.cutoff)}

    def conv(self, node: Node) -> None:
        """A ConvBN reading integers in ``[0, bound of its input]``. Where one LIF alone reads it, that LIF's
        ``1/θ`` folds into the map (output in θ units); otherwise the output is a real-valued current."""
        readers = self.graph.readers(node.name)
        theta = _theta(readers[0].module) if len(readers) == 1 and readers[0].kind == "lif" else None
        in_max = float(np.max(self.bounds[node.inputs[0]]))
        codes, a, b, bits = _bn_affine(node.module)
        if theta is not None:
            a, b = a / theta, b / theta
        acc_bound = _accumulator_bound(codes, in_max, node.name)  # [Cout]
        one = 2.0**FRAC_BITS
        maps = fixed_point(a * one, b * one, acc_bound, node.name)
        self.tensors.update({f"{node.name}.{k}": v for k, v in maps.items()})
        self.tensors[f"{node.name}.weight"] = pack_codes(codes, bits)
        self.attrs[node.name] = {**conv_spec(node), "output": "real" if theta is None else "theta"}
        self.bounds[node.name] = np.abs(a) * acc_bound + np.abs(b)

    def gated_conv(self, node: Node) -> None:
        """A gated conv: the conv (θ-folded: one LIF alone reads it), plus its gate's integer codes — ``gate.weight``
        ``[Cout, Cin]`` and ``gate.bias`` ``[Cout]`` (:mod:`models.networks.gates`: keep channel ``o`` of a window iff
        ``Σ_i count_i · weight[o, i] + bias[o] · T·H·W > 0``). The runtime applies the conv's map itself, so the
        masked channels' currents are exact zeros, and hands the LIF θ-unit currents (its ``input`` is ``gated``)."""
        self.conv(node)
        weight, bias, _ = node.module.gate.codes()
        self.tensors[f"{node.name}.gate.weight"] = weight.numpy().astype(np.int8)
        self.tensors[f"{node.name}.gate.bias"] = bias.numpy().astype(np.int64)
        self.attrs[node.name]["gate_bits"] = GATE_BITS

    def lif(self, node: Node) -> None:
        """A LIF fed by a θ-folded conv reads that conv's map; one fed by a gated conv reads its mapped θ-unit
        currents as they are; one reading a shared real-valued current (a residual stream, an FPN sum) gets its own
        ``1/θ`` map."""
        lif, source = node.module, self.graph[node.inputs[0]]
        cfg = lif.config
        if not cfg.quantize_membrane:
            raise ExportFormatError("integer export needs quantized membranes (the spquant variant)")
        grid = lif.grid
        step_exp = _power_of_two_exponent(grid.step, "the membrane step")
        folded = source.kind in CONV_KINDS and self.attrs[source.name]["output"] == "theta"
        kind = ("gated" if source.kind == "gated_conv" else "conv") if folded else "stream"
        entry: dict[str, Any] = {
            "channels": lif.channels, "input": kind, "reset": cfg.reset,
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
        """The Detect head's ``head_weights`` description and ``head.*`` tensors: a float head (:func:`_head`) or,
        with ``head_act_bits`` set, an integer one (:func:`_integer_head`)."""
        if self.config.head_act_bits:
            head_weights, head_tensors = _integer_head(node.module, self.config.bins)
        else:
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


def _integer_head(head: nn.Module, steps: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """An integer head's ``head_weights`` description and ``head.*`` tensors.

    Branch by branch (:func:`~models.inference.numpy_detect.integer_branches`), each hidden Conv-BN-QuantSiLU reads
    integer codes of a known scale — the level's spike counts (scale ``1/steps``: a rate is count / steps) or the
    previous layer's activation codes — and folds into :func:`_integer_layer`'s maps; each final 1×1 conv into
    float32 ``scale`` (its weight scale × its input's scale) and ``bias``: logits ``acc · scale + bias``.
    """
    described: dict[str, Any] = {}
    tensors: dict[str, np.ndarray] = {}
    for level in range(len(head.cv2)):
        for hidden, final in integer_branches(level):
            in_scale, in_bound = 1.0 / steps, steps
            for position, name in enumerate(hidden):
                block = head.get_submodule(name)
                spec, layer = _integer_layer(block, f"head.{name}", in_scale, in_bound)
                described[f"{name}.conv.weight"] = {**spec, "input_steps": steps} if position == 0 else spec
                tensors.update(layer)
                in_scale, in_bound = float(block.act.scale), block.act.top
            conv = head.get_submodule(final)
            codes, weight_scale = _head_codes(conv, f"head.{final}", 1)
            if conv.bias is None:
                raise ExportFormatError(f"head.{final}: the final conv of an integer head needs its bias")
            _accumulator_bound(codes, in_bound, f"head.{final}")
            tensors[f"head.{final}.weight"] = pack_codes(codes, conv.quant.weight_bits)
            tensors[f"head.{final}.scale"] = (weight_scale * in_scale).astype(np.float32)
            tensors[f"head.{final}.bias"] = conv.bias.detach().to(torch.float32).numpy()
            described[f"{final}.weight"] = {"shape": list(codes.shape), "bits": conv.quant.weight_bits}
    return described, tensors


def _head_codes(conv: nn.Module, name: str, kernel: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes ``[Cout, Cin/groups, k, k]`` and float64 scales ``[Cout]`` of an integer head's conv: a quantized,
    stride-1, 'same'-padded ``kernel``×``kernel`` conv, dense or depthwise."""
    if not isinstance(conv, QuantConv2d) or conv.quant.full_precision:
        raise ExportFormatError(f"{name}: an integer head needs quantized conv weights (head_bits < 32)")
    if (conv.kernel_size != (kernel, kernel) or conv.stride != (1, 1) or conv.padding != (kernel // 2,) * 2
            or conv.dilation != (1, 1) or conv.groups not in (1, conv.out_channels)):
        raise ExportFormatError(f"{name}: an integer head runs stride-1 'same' {kernel}×{kernel} convs, dense or "
                                f"depthwise; got {conv}")
    codes, scale = weight_codes(conv.weight, conv.quant)
    return codes.numpy(), scale.double().numpy()


def _integer_layer(block: nn.Module, name: str, in_scale: float, in_bound: int) -> tuple[dict[str, Any],
                                                                                        dict[str, np.ndarray]]:
    """A hidden Conv-BN-QuantSiLU reading integer codes of value ``code · in_scale``, ``|code| <= in_bound``: its
    ``head_weights`` entry and tensors.

    With the activation scale ``S`` and ``top = 2^(b-1) - 1``, the pre-activation code is ``clamp(floor(z/S + 1/2),
    -top, top)`` of ``z = BN(conv)``, ``= (acc·M + R) >> s`` clamped (:func:`fixed_point`, round half up, as the
    quantizer); ``lut[z + top]`` is its output code ``clamp(floor(SiLU(z·S)/S + 1/2), -top, top)`` (float64 here,
    int8 in the file).
    """
    act = block.act
    if not isinstance(act, QuantSiLU):
        raise ExportFormatError(f"{name}: an integer head needs QuantSiLU activations, got {type(act).__name__}")
    scale = float(act.scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ExportFormatError(f"{name}: the activation quantizer is not calibrated (scale {scale}); run the model "
                                f"on some event windows (training, or a forward pass) before exporting it")
    codes, weight_scale = _head_codes(block.conv, name, block.conv.kernel_size[0])
    gain, offset = _bn(block.bn)
    acc_bound = _accumulator_bound(codes, in_bound, name)
    maps = fixed_point(weight_scale * gain * in_scale / scale, offset / scale, acc_bound, name)
    z = np.arange(-act.top, act.top + 1) * scale  # [2·top + 1] pre-activations
    with np.errstate(over="ignore"):  # exp overflows to inf for very negative z: SiLU is -0 there
        silu = z / (1 + np.exp(-z))
    lut = np.clip(np.floor(silu / scale + 0.5), -act.top, act.top).astype(np.int8)
    tensors = {f"{name}.{k}": v for k, v in maps.items()}
    tensors.update({f"{name}.conv.weight": pack_codes(codes, block.conv.quant.weight_bits), f"{name}.lut": lut})
    return {"shape": list(codes.shape), "bits": block.conv.quant.weight_bits, "act_bits": act.bits}, tensors


def fold(model: SpikingYOLO) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The exported description (JSON-able) and tensors of ``model``: its layer graph, node by node, with every
    node's integer attributes; shapes come from the modules themselves."""
    cfg = model.config
    if not cfg.quantized:
        raise ExportFormatError(f"integer export needs a quantized (spquant) model, got variant {cfg.variant!r}")
    model = model.eval()
    folder = _Folder(model.graph, cfg)
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
