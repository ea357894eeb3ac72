"""The integer runtime: runs an exported ``.spq`` model window by window with int8 membrane state.

``Runtime.load(path)`` rebuilds the network from the file alone (no training code, no checkpoint). Per window,
``runtime(x, state) -> (head_output, state)`` has the interface of the trained detector in eval mode, so
:class:`~models.inference.stream.StreamingDetector` (input representation and NMS) runs either. The network is the
exported layer graph, run by :meth:`Graph.run <models.networks.graph.Graph.run>` with this module's ops.

What is integer (see :mod:`models.inference.export` for the arithmetic): every conv accumulates integer weight codes
over integer inputs (event counts, binary spikes); BN, weight scales and θ are per-channel fixed-point
``(multiplier, shift, bias)`` maps in int64; residual and FPN sums are int64 adds; the LIF is adds, shifts,
comparisons and clamps on int64 with int8 membrane codes, spikes are 0/1. What is float: the conv accumulation runs
as a float32 GEMM (PyTorch has no integer CPU conv) whose every partial sum is an integer below 2^24 and hence
exact — bit-identical to int32 accumulation; and the ultralytics Detect head (DFL box decoding, sigmoid scores),
which reads the firing rates ``spike count / T``, stays float32 as in the trained model (a fake-quantized head's conv
weights are stored as packed codes and scales, and load as the fake-quantized weights ``codes × scale``). A model
exported with ``head_act_bits`` > 0 has an integer head instead
(:class:`~models.inference.fused_head.IntegerDetect`): integer up to its final logits, whose DFL softmax and sigmoid
stay float; its outputs equal the torch-free engine's bit for bit.

Backends (chosen when the runtime is built, ``backend=``): ``"kernels"`` (:class:`KernelOps`, the default) runs
the LIF (all T steps of a neuron in registers) and the requantization as compiled numba loops, the first conv
event-driven (work ∝ events) when the histogram is sparse, the FPN's upsample-and-add in place, and the Detect head
fused (:class:`~models.inference.fused_head.FusedDetect`: BN folded, branches merged, anchors cached; derived at
load, not stored), which agrees with the Detect head to float32 rounding. ``"reference"`` (:class:`ReferenceOps`)
computes the same integers with PyTorch ops and runs the Detect head itself: the bit-exact reference the tests
compare against, and what the ONNX export traces. In both, 1×1 convs run as matmuls, and a gated conv
(:mod:`models.networks.gates`) decides per window and stream in int64 which output channels to keep, then computes
only those (gathered weights); the dropped channels' currents are exact zeros. An integer head runs fused
(branches merged, compiled requantization) on the kernels backend and layer by layer with PyTorch ops on the
reference one: the same integers, so the same outputs.

Batches: ``x [T, B, 2, H, W]`` with a state of int8 ``[B, C, h, w]`` codes runs B independent streams in one call,
each with the results it gets alone.

Thread-safe for independent states: the module is only read, every call returns a new state, and the compiled
kernels release the GIL.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from torch import Tensor, nn

from models.inference.export import fold
from models.inference.fused_head import FusedDetect, IntegerDetect
from models.inference.kernels import lif_kernel, map_kernel, scatter_bytes_kernel, scatter_conv_kernel
from models.inference.numpy_detect import integer_levels, is_integer_head
from models.inference.spq import ExportFormatError, conv_codes, head_weight, read_spq, stored_nbytes
from models.networks.detector import DetectorConfig, SpikingYOLO
from models.networks.graph import CONV_KINDS, Graph, ModuleOps, Node
from models.networks.head import detect_head
from models.networks.quant import FULL_PRECISION_BITS, QuantConfig
from models.networks.ultralytics_parts import Detect

State = dict[str, Tensor]
SPARSE_INPUT = 0.05  # event histograms up to this density take the event-driven first conv


def _channel(values: np.ndarray) -> Tensor:
    """Per-channel int64 constants ``[C]`` → ``[C, 1, 1]`` (broadcast over ``[..., C, h, w]``)."""
    return torch.from_numpy(np.asarray(values, dtype=np.int64)).view(-1, 1, 1)


class FixedPointMap(nn.Module):
    """A per-channel fixed-point affine map ``(x·M + R) >> s`` on integers (``x`` may be float32 holding integers)."""

    def __init__(self, tensors: dict[str, np.ndarray], name: str) -> None:
        super().__init__()
        prefix = f"{name}." if name else ""
        self.register_buffer("multiplier", _channel(tensors[f"{prefix}multiplier"]))
        self.register_buffer("bias", _channel(tensors[f"{prefix}bias"]))
        self.register_buffer("shift", _channel(tensors[f"{prefix}shift"]))
        self.register_buffer("divisor", torch.ones_like(self.shift) << self.shift)

    def forward(self, x: Tensor, channels: Tensor | None = None) -> Tensor:
        """The map of ``x [..., C, h, w]``, or of ``x [..., K, h, w]`` holding the ``channels`` (indices ``[K]``)."""
        m, r, d = self.multiplier, self.bias, self.divisor
        if channels is not None:
            m, r, d = m[channels], r[channels], d[channels]
        # ``>> s`` as a floor division by 2^s: the same integers, and ONNX has no arithmetic shift of signed ints
        return torch.div(x.to(torch.int64) * m + r, d, rounding_mode="floor")

    @classmethod
    def identity(cls, channels: int) -> FixedPointMap:
        """The map ``(x·1 + 0) >> 0`` of ``channels`` channels (for currents already in the reader's units)."""
        zeros = np.zeros(channels, dtype=np.int64)
        return cls({"multiplier": zeros + 1, "bias": zeros, "shift": zeros}, "")

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(M, R, s)`` as int64 ``[C]`` arrays for the compiled kernels."""
        return self.multiplier.view(-1).numpy(), self.bias.view(-1).numpy(), self.shift.view(-1).numpy()


class IntConv(nn.Module):
    """Integer conv: 0/1 spikes or counts ``[N, Cin, H, W]`` → accumulators ``[N, Cout, h, w]``, plus its output map.

    The accumulators are float32 holding exact integers (integer codes times integer inputs, every partial sum below
    2^24: PyTorch has no integer CPU conv, and this is bit-identical to int32 accumulation). ``map`` turns them into
    ``Q(F)`` currents: real units, or θ units of the one LIF that reads them. A gated conv also holds its gate's
    integer codes (:meth:`keep`).
    """

    def __init__(self, spec: dict[str, Any], tensors: dict[str, np.ndarray], name: str) -> None:
        super().__init__()
        codes = conv_codes(tensors, name, spec)  # [Cout, Cin, k, k]
        shape = codes.shape
        self.register_buffer("weight", torch.from_numpy(codes.astype(np.float32)))
        self.map = FixedPointMap(tensors, name)
        self.stride, self.padding = tuple(spec["stride"]), tuple(spec["padding"])
        self.square = shape[2] == shape[3] and len(set(self.stride)) == 1 and len(set(self.padding)) == 1
        # an unpadded 1×1 conv runs as a matmul
        self.is_pointwise = shape[2:] == (1, 1) and self.padding == (0, 0)
        self.gated = f"{name}.gate.weight" in tensors
        if self.gated:
            self.register_buffer("gate_weight", torch.from_numpy(tensors[f"{name}.gate.weight"].astype(np.int64)))
            self.register_buffer("gate_bias", torch.from_numpy(tensors[f"{name}.gate.bias"].astype(np.int64)))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the output for an input of ``height`` × ``width``."""
        k = self.weight.shape[-2:]
        return tuple((n + 2 * p - kk) // s + 1 for n, p, kk, s in zip((height, width), self.padding, k, self.stride,
                                                                        strict=True))

    def forward(self, x: Tensor, weight: Tensor | None = None) -> Tensor:
        """Accumulators of ``x [N, Cin, H, W]`` with the conv's codes, or with ``weight`` (some output channels')."""
        weight = self.weight if weight is None else weight
        if self.is_pointwise:
            # 1×1: a matmul [Cout, Cin] @ [N, Cin, h·w] skips mkldnn's per-call layout reorders (same integers)
            x = x[..., ::self.stride[0], ::self.stride[1]]
            return torch.matmul(weight.flatten(1), x.flatten(2)).view(x.shape[0], -1, *x.shape[2:])
        return nn.functional.conv2d(x, weight, None, self.stride, self.padding)

    def sparse(self, x: Tensor, weight: Tensor | None = None) -> Tensor:
        """:meth:`forward` event-driven (work ∝ non-zero inputs); for square kernels, equal strides and padding."""
        weight = self.weight if weight is None else weight.contiguous()
        h, w = self.output_size(*x.shape[-2:])
        out = torch.zeros((x.shape[0], weight.shape[0], h, w), dtype=torch.float32)
        x = x.contiguous()
        if x.dtype == torch.uint8 and x.numel() % 8 == 0:  # event counts: skip 8 zero counts per test
            scatter_bytes_kernel(x.numpy(), weight.numpy(), self.stride[0], self.padding[0], out.numpy())
        else:
            scatter_conv_kernel(x.to(torch.float32).numpy(), weight.numpy(), self.stride[0], self.padding[0],
                                 out.numpy())
        return out

    def keep(self, x: Tensor) -> Tensor:
        """A gated conv's decision for the window ``x [T, B, Cin, H, W]``: bool ``[B, Cout]``, channel ``o`` kept iff
        ``Σ_i count_i · w[o, i] + b[o] · T·H·W > 0`` in int64 (:mod:`models.networks.gates`)."""
        counts = x.to(torch.int64).sum((0, 3, 4))  # [B, Cin]: spikes or events over the window
        positions = x.shape[0] * x.shape[-2] * x.shape[-1]
        return counts @ self.gate_weight.T + self.gate_bias * positions > 0


class IntLIF(nn.Module):
    """Integer LIF: input ``[T, B, C, h, w]`` through a fixed-point map to ``Q(F)`` θ-unit currents, int8 codes
    ``[B, C, h, w]`` → 0/1 spikes (float32, the next conv's input) and new codes.

    The map is the producing conv's (θ folded in) for a LIF fed by one conv, or the LIF's own ``1/θ`` map
    (:attr:`map`) for one reading a shared real-valued current.
    """

    def __init__(self, spec: dict[str, Any], tensors: dict[str, np.ndarray], name: str, frac_bits: int) -> None:
        super().__init__()
        self.channels = spec["channels"]
        self.map = FixedPointMap(tensors, name) if spec["input"] == "stream" else None
        if spec["input"] == "gated":  # a gated conv hands over θ-unit currents: the identity map
            self.map = FixedPointMap.identity(self.channels)
        self.one = 1 << frac_bits  # the threshold, in θ units
        self.leak_shift = spec["leak_shift"]
        self.step_shift = spec["step_shift"]
        self.low, self.high = spec["code_min"] << self.step_shift, spec["code_max"] << self.step_shift
        self.half = 1 << (self.step_shift - 1)
        self.hard_reset = spec["reset"] == "hard"

    def forward(self, x: Tensor, codes: Tensor, input_map: FixedPointMap) -> tuple[Tensor, Tensor]:
        # Shifts written as multiplications and floor divisions by powers of two (exportable to ONNX).
        current = input_map(x)
        spikes = []
        for t in range(current.shape[0]):
            u = current[t] if self.leak_shift is None else current[t] + codes.to(torch.int64) * (1 << self.leak_shift)
            fired = u > self.one
            spikes.append(fired.to(torch.float32))
            if not self.hard_reset:
                u = u - fired.to(torch.int64) * self.one
            level = torch.div(u.clamp(self.low, self.high) + self.half, 1 << self.step_shift, rounding_mode="floor")
            codes = level.to(torch.int8)
            if self.hard_reset:
                codes = codes.masked_fill(fired, 0)
        return torch.stack(spikes), codes

    def fused(self, x: Tensor, codes: Tensor, input_map: FixedPointMap) -> tuple[Tensor, Tensor]:
        """:meth:`forward` in one compiled pass over the neurons (same integers, no temporaries)."""
        t, b, c = x.shape[:3]
        spikes = torch.empty(x.shape, dtype=torch.float32)
        new = codes.clone()
        lif_kernel(x.reshape(t, b, c, -1).numpy(), *input_map.arrays(), new.view(b, c, -1).numpy(),
                    spikes.view(t, b, c, -1).numpy(), self.one, -1 if self.leak_shift is None else self.leak_shift,
                    self.low, self.high, self.half, self.step_shift, self.hard_reset)
        return spikes, new


def _head_state(packed: dict[str, Any], tensors: dict[str, np.ndarray]) -> dict[str, Tensor]:
    """The Detect head's state dict from the ``head.*`` tensors: each weight listed in ``packed`` (a fake-quantized
    conv's) as float32 ``codes × scale`` — the product :func:`~models.networks.quant.fake_quant_weight` forms — the
    rest as stored."""
    state = {k[5:]: torch.from_numpy(v) for k, v in tensors.items()
             if k.startswith("head.") and not k.endswith(".scale")}
    state.update({key: torch.from_numpy(head_weight(tensors, key, packed)) for key in packed})
    return state


def _heads(cfg: DetectorConfig, detect: Node, tensors: dict[str, np.ndarray]) -> tuple[nn.Module, nn.Module | None]:
    """The detect node's head for the reference backend and, where there is one, its fused form for the kernels
    backend: ultralytics' Detect and :class:`FusedDetect`, or an integer head's two :class:`IntegerDetect` forms."""
    packed, strides = detect.attrs["head_weights"], detect.attrs["strides"]
    if len(detect.inputs) != len(strides):
        raise ValueError(f"detect reads {len(detect.inputs)} levels with {strides} strides")
    if is_integer_head(packed):
        levels = integer_levels(tensors, packed, len(strides))
        return tuple(IntegerDetect(levels, strides, cfg.reg_max, len(cfg.class_names), fused=fused).eval()
                     for fused in (False, True))
    # The head is built by the detector's own code from the config (hidden widths of a pruned head), with plain
    # convs: a fake-quantized head's weights load as the codes × scale its forward used, and re-quantizing
    # them on every call could only add error (it moves a ternary scale by an ulp).
    head = detect_head(cfg.widths()["neck"], len(detect.inputs), cfg.class_names, cfg.reg_max, cfg.widths(),
                       QuantConfig(weight_bits=FULL_PRECISION_BITS))
    head.load_state_dict(_head_state(packed, tensors))
    head.stride = torch.tensor(strides, dtype=torch.float32)
    head.eval()
    # Derived at load from the head's tensors (not stored); None: run the head as is
    return head, FusedDetect(head) if FusedDetect.supports(head) else None


def _key(name: str) -> str:
    return name.replace(".", "/")


BACKENDS = ("kernels", "reference")


class Runtime(nn.Module):
    """An exported integer detector: ``runtime(x, state) -> (y, state)`` and ``init_state()``.

    ``x`` is ``[T, B, 2, H, W]`` counts (uint8 from the histogram); ``state`` a flat dict ``{lif name: int8 [B, C,
    h, w]}`` (membrane level codes) or None for a fresh one; ``y`` is ``[B, 4 + nc, anchors]`` as the trained
    model gives in eval mode. The network is the exported layer graph (:attr:`graph`, its nodes bound to the
    integer layers), run by one of two backends chosen at construction: ``"kernels"`` (compiled LIF and
    requantization, the event-driven first conv, the fused head: what serves) or ``"reference"`` (the same
    integers with PyTorch ops and the Detect head itself: what the tests compare against and ONNX traces).
    """

    def __init__(self, meta: dict[str, Any], tensors: dict[str, np.ndarray], source: Path | None = None,
                 backend: str = "kernels") -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown runtime backend {backend!r}; backends are {BACKENDS}")
        try:
            self.config = DetectorConfig.from_dict(meta["detector"])
            graph = Graph.from_description(meta["graph"])
            convs = graph.of_kind(*CONV_KINDS)
            for node in convs:
                if node.attrs["output"] not in ("theta", "real"):
                    raise ValueError(f"conv {node.name!r}: output units {node.attrs['output']!r}")
            self.convs = nn.ModuleDict({_key(n.name): IntConv(n.attrs, tensors, n.name) for n in convs})
            self.lifs = nn.ModuleDict({_key(n.name): IntLIF(n.attrs, tensors, n.name, meta["frac_bits"])
                                       for n in graph.of_kind("lif")})
            (detect,) = graph.of_kind("detect")
            self.head, self.fused_head = _heads(self.config, detect, tensors)
            layers = {**{n.name: self.convs[_key(n.name)] for n in convs},
                      **{n.name: self.lifs[_key(n.name)] for n in graph.of_kind("lif")}, detect.name: self.head}
            self.graph = graph.bind(layers)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            where = f"{source}: " if source else ""
            raise ExportFormatError(f"{where}inconsistent integer model ({type(exc).__name__}: {exc})") from exc
        self.requires_grad_(False)
        self.eval()
        self.source = source
        self.backend = backend
        self.ops = KernelOps(self) if backend == "kernels" else ReferenceOps(self)
        self.state_shapes = self.graph.state_shapes(*self.config.padded_size)
        self.weight_nbytes = stored_nbytes(tensors)  # as stored: packed codes, constants, head

    @classmethod
    def load(cls, path: str | os.PathLike[str], backend: str = "kernels") -> Self:
        """The runtime of an exported ``.spq`` file (see :func:`models.inference.export.read_spq` for the errors)."""
        meta, tensors = read_spq(path)
        return cls(meta, tensors, Path(path), backend)

    @classmethod
    def from_model(cls, model: SpikingYOLO, backend: str = "kernels") -> Self:
        """Fold a trained detector in memory (what ``export`` then ``load`` gives, without the file)."""
        return cls(*fold(model), backend=backend)

    def forward(self, x: Tensor, state: State | None = None,
                observe: Callable[[Node, Any], None] | None = None) -> tuple[Tensor, State]:
        return self.run(x, state, self.ops, observe)

    def run(self, x: Tensor, state: State | None, ops: ReferenceOps,
            observe: Callable[[Node, Any], None] | None = None) -> tuple[Tensor, State]:
        """:meth:`forward` with the given ops (``ReferenceOps(runtime)`` traces the PyTorch-op path for ONNX)."""
        if x.dim() != 5 or x.shape[2] != 2 or tuple(x.shape[-2:]) != self.config.padded_size:
            raise ValueError(f"expected input [T, B, 2, {self.config.padded_size[0]}, {self.config.padded_size[1]}], "
                             f"got {tuple(x.shape)}")
        return self.graph.run(ops, x, self.init_state(x.shape[1]) if state is None else state, observe)

    def init_state(self, batch: int = 1) -> State:
        """A fresh state (all membrane codes 0) for ``batch`` streams."""
        return {name: torch.zeros((batch, *shape), dtype=torch.int8) for name, shape in self.state_shapes.items()}


class ReferenceOps:
    """The runtime's integer arithmetic as PyTorch ops, node kind by node kind (the graph backend ONNX traces).

    A conv whose map has θ folded in (``attrs["output"] == "theta"``) hands its float32 accumulators to the one
    LIF that reads it, which applies the conv's map; every other conv outputs ``Q(F)`` int64 currents.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.convs, self.lifs, self.head = runtime.convs, runtime.lifs, runtime.head

    def conv(self, node: Node, x: Tensor) -> Tensor:
        conv = self.convs[_key(node.name)]
        acc = self._accumulate(node, conv, x.flatten(0, 1))
        return self._output(node, conv, acc).unflatten(0, x.shape[:2])  # [T, B, C', h, w]

    def gated_conv(self, node: Node, x: Tensor) -> Tensor:
        """Per stream, only the output channels its gate keeps: their weights gathered, their accumulators mapped to
        θ-unit int64 currents; the dropped channels' currents are exact zeros. ``[T, B, C', h, w]`` int64."""
        if torch.jit.is_tracing():  # a trace would freeze one window's masks into the graph
            raise ExportFormatError(f"{node.name}: a gated conv decides per window; it cannot be traced (ONNX)")
        conv = self.convs[_key(node.name)]
        keep = conv.keep(x)  # [B, C'] bool
        h, w = conv.output_size(*x.shape[-2:])
        out = torch.zeros((x.shape[0], x.shape[1], conv.weight.shape[0], h, w), dtype=torch.int64)
        for b in range(x.shape[1]):
            kept = torch.nonzero(keep[b]).flatten()  # [K]
            if len(kept):
                acc = self._accumulate(node, conv, x[:, b], conv.weight[kept])  # [T, K, h, w]
                out[:, b, kept] = self._map(conv, acc, kept)
        return out

    def _accumulate(self, node: Node, conv: IntConv, x: Tensor, weight: Tensor | None = None) -> Tensor:
        return conv(x.to(torch.float32), weight)  # counts ≤ cutoff and spikes: exact in float32

    def _map(self, conv: IntConv, acc: Tensor, channels: Tensor) -> Tensor:
        return conv.map(acc, channels)

    def _output(self, node: Node, conv: IntConv, acc: Tensor) -> Tensor:
        return acc if node.attrs["output"] == "theta" else conv.map(acc)

    def lif(self, node: Node, x: Tensor, codes: Tensor) -> tuple[Tensor, Tensor]:
        if not isinstance(codes, Tensor) or codes.dtype != torch.int8 or codes.shape != x.shape[1:]:
            raise ValueError(f"state {node.name!r}: expected int8 {tuple(x.shape[1:])}, got "
                             f"{getattr(codes, 'dtype', type(codes).__name__)} {tuple(getattr(codes, 'shape', ()))}")
        lif = self.lifs[_key(node.name)]
        input_map = lif.map if lif.map is not None else self.convs[_key(node.inputs[0])].map
        return self._lif(lif, x, codes, input_map)

    def _lif(self, lif: IntLIF, x: Tensor, codes: Tensor, input_map: FixedPointMap) -> tuple[Tensor, Tensor]:
        return lif(x, codes, input_map)

    add = ModuleOps.add  # int64 currents add as float ones do

    def upsample_add(self, node: Node, fine: Tensor, coarse: Tensor) -> Tensor:
        return fine + _upsample_nearest(coarse, fine.shape[-2:])

    def rate(self, node: Node, spikes: Tensor) -> Tensor:
        return spikes.mean(0)  # spike count / T, [B, C, h, w] float32, as the trained model

    def detect(self, node: Node, *rates: Tensor) -> Tensor:
        y = self.head(list(rates))
        return y[0] if isinstance(self.head, Detect) else y  # Detect's eval output is (y, raw levels)


class KernelOps(ReferenceOps):
    """The same integers as :class:`ReferenceOps`, fast: compiled LIF and requantization kernels, the event-driven
    first conv on sparse histograms, the in-place FPN upsample-add and the fused Detect head."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self.fused_head = runtime.fused_head
        self.events = runtime.graph.nodes[0].name  # the input node: the event histogram

    def _accumulate(self, node: Node, conv: IntConv, x: Tensor, weight: Tensor | None = None) -> Tensor:
        if node.inputs[0] == self.events and conv.square and _nonzero(x) <= SPARSE_INPUT * x.numel():
            return conv.sparse(x, weight)  # the same integers for far less work
        return conv(x.to(torch.float32), weight)

    def _map(self, conv: IntConv, acc: Tensor, channels: Tensor) -> Tensor:
        out = torch.empty(acc.shape, dtype=torch.int64)
        mult, bias, shift = (np.ascontiguousarray(v[channels.numpy()]) for v in conv.map.arrays())
        map_kernel(acc.flatten(2).numpy(), mult, bias, shift, out.flatten(2).numpy())
        return out

    def _output(self, node: Node, conv: IntConv, acc: Tensor) -> Tensor:
        if node.attrs["output"] == "theta":
            return acc
        out = torch.empty(acc.shape, dtype=torch.int64)
        map_kernel(acc.flatten(2).numpy(), *conv.map.arrays(), out.flatten(2).numpy())
        return out

    def _lif(self, lif: IntLIF, x: Tensor, codes: Tensor, input_map: FixedPointMap) -> tuple[Tensor, Tensor]:
        return lif.fused(x, codes, input_map)

    def upsample_add(self, node: Node, fine: Tensor, coarse: Tensor) -> Tensor:
        return _add_upsampled(fine, coarse)

    def detect(self, node: Node, *rates: Tensor) -> Tensor:
        return self.fused_head(list(rates)) if self.fused_head is not None else super().detect(node, *rates)


def _nonzero(x: Tensor) -> int:
    """Count of non-zero entries; numpy counts uint8 (the histogram) ~10× faster than torch."""
    return int(np.count_nonzero(x.numpy()) if x.dtype == torch.uint8 else torch.count_nonzero(x))


def _add_upsampled(fine: Tensor, coarse: Tensor) -> Tensor:
    """``fine + _upsample_nearest(coarse, fine's size)`` for integer ``[..., h, w]`` currents; for an integer
    factor in place on ``fine`` (a fresh current), with ``coarse`` broadcast over each block (no upsampled copy)."""
    (h, w), (ch, cw) = fine.shape[-2:], coarse.shape[-2:]
    if h % ch or w % cw or not fine.is_contiguous():
        return fine + _upsample_nearest(coarse, (h, w))
    # nearest source index floor(i · ch / h) = i // (h / ch): row block i // f reads coarse row i
    fine.view(*fine.shape[:-2], ch, h // ch, cw, w // cw).add_(coarse[..., :, None, :, None])
    return fine


def _upsample_nearest(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Nearest-neighbour resize of an integer ``[..., h, w]`` tensor (source index ``floor(dst · in / out)``)."""
    rows = torch.arange(size[0]) * x.shape[-2] // size[0]
    cols = torch.arange(size[1]) * x.shape[-1] // size[1]
    return x.index_select(-2, rows).index_select(-1, cols)
