"""FLOPs, synaptic operations and memory of a detector, with the SpQuant-SNN paper's accounting.

- **Conv FLOPs**: one multiply-accumulate per weight and output position, ``n·C_out·H'·W'·C_in/g·k²`` (the paper's
  ``bs·active_ch·H·W·(C_in/g·k²)``; ``n`` = time steps for the spiking layers, 1 for the head, which runs once per
  window on the time-averaged spikes). *Dense* counts the scale's unpruned widths at every position; *pruned* the
  channels the model keeps, at every position.
- **Membrane FLOPs**: one update per neuron and time step (dense, pruned); the paper counts only neurons whose stored
  state is non-zero after the step (its ``(1 − frac(u == 0))``).
- **Executed FLOPs** (``flops_executed``, the headline ``flops_reduction``): the work the runtimes run, by the paper's
  formula — conv FLOPs over the kept channels at every position plus membrane updates of non-zero states. A gated
  conv (channel gates, :mod:`models.networks.gates`) counts only the output channels its gate kept in each window
  (measured: the masks the model produced on the recordings, ``kept_fraction`` per layer) plus its predictor's own
  work (pooling ``Cin·T·H·W`` adds and the ``Cin·Cout`` 1×1 conv per window); its event-driven count and SynOps
  are scaled by the layer's mean kept fraction.
- **Event-driven FLOPs** (``flops_effective``, ``flops_reduction_event_driven``): the executed count less every conv
  output position whose receptive field holds no non-zero input at that step, at ``tile`` × ``tile`` granularity (a
  silent tile's conv output is exactly the BN shift, a constant). A ceiling: what event-driven hardware could skip.
  The runtimes run dense convs (faster on a CPU) but for their event-driven paths — the first conv on sparse event
  histograms, spike maps below 10 % density — whose savings the executed count does not credit either.
- **SynOps**: non-zero inputs × fan-out of every spiking-layer conv (the head is counted in FLOPs only).
- **Memory** (``memory_reduction``): packed weights — every quantized conv at its bits, the Detect head's at
  ``head_bits``, the rest (BN, thresholds, biases) FP32 — plus the membrane state one stream holds, packed at the
  level grid's bits. Beside it: the state as int8 codes and as FP32; the shipped ``.spq`` file
  (``shipped_bytes``, ``memory_reduction_shipped`` with the packed state) and what the torch-free runtime holds
  once loaded (``resident_model_bytes``, ``resident_state_bytes_per_stream``), measured on an export of the model.
- **Energy** (the SNN literature's estimate): a conv that reads binary spikes costs its SynOps × E_AC (an input
  spike only adds its weights); a conv that reads non-binary values — the first conv (event counts) and the Detect
  head (firing rates) — costs its event-driven MACs × E_MAC. Membrane updates, memory traffic and NMS are not
  counted. E_MAC = 4.6 pJ and E_AC = 0.9 pJ are 32-bit float multiply + add and add at 45 nm (Horowitz, ISSCC 2014).
  The reference is the dense FP32 network run as an ANN would run it: every MAC of every conv × E_MAC.

The dense FP32 baseline of the same scale and input size is the reference of every reduction.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import tempfile
import tracemalloc
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.inference.export import export_model
from models.inference.spq import ExportFormatError, header_nbytes
from models.inference.stream import run_recordings
from models.networks.detector import DetectorConfig, SpikingYOLO, build_detector
from models.networks.gates import GATE_BITS, gates
from models.networks.graph import CONV_KINDS, conv_spec
from models.networks.neuron import IntegerLIF, MembraneHook
from models.networks.quant import QuantConv2d

FP32_BYTES = 4
# Energy per operation at 45 nm, 0.9 V: M. Horowitz, "Computing's energy problem (and what we can do about it)",
# ISSCC 2014, pp. 10-14, doi:10.1109/ISSCC.2014.6757323 (table of arithmetic energies).
ENERGY_SOURCE = "M. Horowitz, Computing's energy problem (and what we can do about it), ISSCC 2014, 45 nm"
E_MAC_PJ = 4.6  # fp32 mult 3.7 + fp32 add 0.9
E_AC_PJ = 0.9  # fp32 add
HOROWITZ_PJ = {"int8_add": 0.03, "int32_add": 0.1, "int8_mult": 0.2, "int32_mult": 3.1, "fp32_add": 0.9,
               "fp32_mult": 3.7}
# Integer units: an int8 × int8 product accumulated in int32 (MAC), an int32 accumulation of a weight (AC).
E_MAC_INT8_PJ = HOROWITZ_PJ["int8_mult"] + HOROWITZ_PJ["int32_add"]
E_AC_INT_PJ = HOROWITZ_PJ["int32_add"]
_PJ_TO_UJ = 1e-6


@dataclasses.dataclass
class LayerCount:
    """What one layer did over the measured windows (sums; :meth:`FlopsCounter.layers` divides by windows)."""

    name: str
    kind: str  # "conv" | "membrane"
    channels: int  # output channels (conv) or neurons per position (membrane)
    spiking: bool = True  # part of the SNN (runs every time step) rather than the head
    binary_input: bool = False  # a conv that reads spikes (costs accumulates) rather than counts or rates (MACs)
    flops: float = 0.0  # at this model's widths, every position (conv) or every neuron (membrane)
    effective: float = 0.0  # gated positions (conv) or non-zero states (membrane): the event-driven count
    synops: float = 0.0  # non-zero inputs × fan-out (spiking convs)
    spikes: float = 0.0  # spikes emitted (membrane)
    positions: float = 0.0  # output positions × steps seen
    gated: bool = False  # a gated conv: its output channels are kept per window
    kept_channels: float = 0.0  # output channels its gate kept (gated convs)
    predictor: float = 0.0  # its gate's own FLOPs (gated convs)

    def per_window(self, windows: int) -> LayerCount:
        """The same counts divided by ``windows``."""
        fields = ("flops", "effective", "synops", "spikes", "positions", "kept_channels", "predictor")
        scaled = {f: getattr(self, f) / max(windows, 1) for f in fields}
        return dataclasses.replace(self, **scaled)

    @property
    def kept_fraction(self) -> float:
        """Mean share of the output channels a gated conv's gate kept per window (1 for every other layer)."""
        return self.kept_channels / self.channels if self.gated and self.channels else 1.0

    @property
    def executed(self) -> float:
        """What a runtime executes by the paper's formula: a conv at every position over its kept channels (plus a
        gate's predictor), a membrane's non-zero states."""
        return self.flops * self.kept_fraction + self.predictor if self.kind == "conv" else self.effective

    @property
    def active_fraction(self) -> float:
        """Effective share of the work (1 = nothing skipped)."""
        return self.effective / self.flops if self.flops else 1.0

    @property
    def firing_rate(self) -> float:
        """Spikes per neuron and time step (membrane layers)."""
        return self.spikes / self.flops if self.kind == "membrane" and self.flops else 0.0

    def energy_ops(self) -> tuple[str, float]:
        """``("AC", SynOps)`` for a conv reading spikes, ``("MAC", effective MACs)`` for one reading counts or rates,
        ``("none", 0)`` for a membrane (not counted)."""
        if self.kind != "conv":
            return "none", 0.0
        return ("AC", self.synops) if self.binary_input else ("MAC", self.effective)

    def energy_pj(self, e_mac: float = E_MAC_PJ, e_ac: float = E_AC_PJ) -> float:
        """This layer's energy estimate in pJ (see the module docstring)."""
        op, count = self.energy_ops()
        return count * {"AC": e_ac, "MAC": e_mac, "none": 0.0}[op]


def active_positions(x: Tensor, conv: nn.Conv2d, out_hw: tuple[int, int], tile: int) -> Tensor:
    """Output positions (of ``[N, H', W']``) whose receptive field holds a non-zero input, widened to whole tiles."""
    nonzero = x.ne(0).any(1, keepdim=True).float()  # [N, 1, H, W]
    active = F.max_pool2d(nonzero, conv.kernel_size, conv.stride, conv.padding, conv.dilation)  # [N, 1, H', W']
    active = active[..., : out_hw[0], : out_hw[1]]
    if tile > 1:
        tiles = F.max_pool2d(active, tile, tile, ceil_mode=True)  # [N, 1, ceil(H'/tile), ceil(W'/tile)]
        active = tiles.repeat_interleave(tile, -2).repeat_interleave(tile, -1)[..., : out_hw[0], : out_hw[1]]
    return active[:, 0]


class FlopsCounter:
    """Count conv and membrane work of ``model`` while it runs (a context: hooks are removed on exit).

    Every ``nn.Conv2d`` and :class:`IntegerLIF` is observed; ``windows`` counts the samples × windows seen.
    """

    def __init__(self, model: SpikingYOLO, tile: int = 1) -> None:
        if tile < 1:
            raise ValueError(f"tile must be >= 1, got {tile}")
        self.model, self.tile = model, tile
        self.counts: dict[str, LayerCount] = {}
        self.windows = 0
        self._handles: list[Any] = []

    def __enter__(self) -> FlopsCounter:
        self._handles.append(self.model.register_forward_pre_hook(self._count_window))
        for node in self.model.graph:
            if node.kind in CONV_KINDS:
                reads_spikes = self.model.graph[node.inputs[0]].kind == "lif"
                self._watch_conv(f"{node.name}.conv", node.module.conv, spiking=True, binary_input=reads_spikes)
                if node.kind == "gated_conv":
                    count = self.counts[f"{node.name}.conv"]
                    count.gated = True
                    self._handles.append(node.module.gate.register_forward_hook(self._gate_hook(count)))
            elif node.kind == "lif":
                count = self.counts[node.name] = LayerCount(node.name, "membrane", node.module.channels or 0)
                self._handles.append(node.module.register_forward_hook(self._spike_hook(count)))
                self._handles.append(node.module.register_membrane_hook(self._membrane_hook(count)))
            elif node.kind == "detect":
                for name, module in node.module.named_modules():
                    if isinstance(module, nn.Conv2d):
                        self._watch_conv(f"{node.name}.{name}", module, spiking=False)
        return self

    def _watch_conv(self, name: str, conv: nn.Conv2d, spiking: bool, binary_input: bool = False) -> None:
        self.counts[name] = LayerCount(name, "conv", conv.out_channels, spiking, binary_input)
        self._handles.append(conv.register_forward_hook(self._conv_hook(self.counts[name])))

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _count_window(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.windows += int(args[0].shape[1])  # x: [T, B, 2, H, W]

    def _conv_hook(self, count: LayerCount) -> Callable[..., None]:
        def hook(conv: nn.Conv2d, args: tuple[Tensor, ...], out: Tensor) -> None:
            x = args[0]  # [N, C_in, H, W]: N = T·B in the spiking layers, B in the head
            kernel = conv.in_channels // conv.groups * math.prod(conv.kernel_size)
            positions = out.shape[0] * out.shape[2] * out.shape[3]
            active = active_positions(x, conv, out.shape[2:], self.tile)
            count.positions += positions
            count.flops += positions * conv.out_channels * kernel
            count.effective += float(active.sum()) * conv.out_channels * kernel
            if count.spiking:  # (the first conv too: its SynOps are reported, its energy counts MACs)
                # inputs in each receptive field, summed: a non-zero input reaches C_out/g outputs per kernel tap
                ones = torch.ones(1, 1, *conv.kernel_size, dtype=torch.float32, device=x.device)
                reach = F.conv2d(x.ne(0).sum(1, keepdim=True).float(), ones, None, conv.stride, conv.padding,
                                 conv.dilation)
                count.synops += float(reach.sum()) * conv.out_channels / conv.groups

        return hook

    @staticmethod
    def _gate_hook(count: LayerCount) -> Callable[..., None]:
        def hook(gate: nn.Module, args: tuple[Tensor, ...], out: tuple[Tensor, Tensor]) -> None:
            x, keep = args[0], out[0]  # [T, B, Cin, H, W], [B, Cout]
            count.kept_channels += float(keep.detach().sum())
            count.predictor += x.numel() + keep.numel() * x.shape[2]  # pooling adds, then Cin·Cout MACs per stream

        return hook

    @staticmethod
    def _spike_hook(count: LayerCount) -> Callable[..., None]:
        def hook(lif: IntegerLIF, args: tuple[Tensor, ...], out: tuple[Tensor, Tensor]) -> None:
            count.spikes += float(out[0].float().sum())

        return hook

    @staticmethod
    def _membrane_hook(count: LayerCount) -> MembraneHook:
        def hook(u: Tensor, stored: Tensor) -> None:
            count.channels = stored.shape[1]
            count.flops += stored.numel()
            count.effective += float(stored.ne(0).sum())
            count.positions += stored.numel() / stored.shape[1]

        return hook

    def layers(self) -> list[LayerCount]:
        """Per-window counts of every layer, in module order (layers that never ran are left out); a gated conv's
        event-driven count and SynOps over its kept channels (times the mean kept fraction) plus its predictor."""
        layers = [c.per_window(self.windows) for c in self.counts.values() if c.positions]
        return [dataclasses.replace(c, effective=c.effective * c.kept_fraction + c.predictor,
                                    synops=c.synops * c.kept_fraction) if c.gated else c for c in layers]


def static_counts(model: SpikingYOLO) -> list[LayerCount]:
    """Per-window counts of ``model`` on one all-zero window; their ``flops`` count every position."""
    height, width = model.config.padded_size
    with FlopsCounter(model) as counter, torch.inference_mode():
        model.eval()(torch.zeros(model.config.bins, 1, 2, height, width, dtype=torch.uint8))
    return counter.layers()


def dense_reference(config: DetectorConfig) -> SpikingYOLO:
    """The unpruned FP32 model of ``config``'s scale and input: the reference of every reduction."""
    return build_detector(dataclasses.replace(config, variant="baseline", head_bits=32, head_act_bits=0, channels=()))


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the parameters at their configured bits, packed (quantized conv weights; channel gates at their
    :data:`~models.networks.gates.GATE_BITS`, as exported), else FP32."""
    bits = {id(m.weight): m.quant.weight_bits for m in model.modules() if isinstance(m, QuantConv2d)}
    bits.update({id(p): GATE_BITS for gate in gates(model) for p in (gate.weight, gate.bias)})
    return sum(math.ceil(p.numel() * bits.get(id(p), 32) / 8) for p in model.parameters())


def footprint(model: Any) -> dict[str, int]:
    """The size of a model as it runs, walked off its layer graph: one definition for the report, the service and
    the export summary.

    ``model`` is a trained :class:`SpikingYOLO` (float or fake-quant: every parameter counts; weights packed at
    their configured bits; it holds its membranes as float32) or an integer runtime (weight codes plus the head's
    parameters; weights as stored in its file; int8 membrane codes). Keys: ``conv_layers``, ``channels`` (their
    output channels), ``params``, ``weight_bytes``, ``state_neurons``, ``state_bytes_per_stream`` (as held) and
    ``state_bytes_per_stream_packed`` (at the membrane grid's bits; FP32 for a float membrane).
    """
    graph, cfg = model.graph, model.config
    convs = [conv_spec(node) for node in graph.of_kind(*CONV_KINDS)]
    head_convs = [m for node in graph.of_kind("detect") for m in node.module.modules() if isinstance(m, nn.Conv2d)]
    neurons = sum(math.prod(shape) for shape in graph.state_shapes(*cfg.padded_size).values())
    neuron = cfg.neuron()
    packed = neuron.grid.packed_nbytes(neurons) if neuron.quantize_membrane else FP32_BYTES * neurons
    trained = isinstance(model, SpikingYOLO)
    if trained:
        params, weights, held = sum(p.numel() for p in model.parameters()), weight_bytes(model), FP32_BYTES * neurons
    else:  # integer layers hold their codes as buffers; the file's bytes are what ships
        codes = sum(c["out_channels"] * c["in_channels"] * math.prod(c["kernel"]) for c in convs)
        params, weights, held = codes + sum(p.numel() for p in model.parameters()), model.weight_nbytes, neurons
    return {
        "conv_layers": len(convs) + len(head_convs),
        "channels": sum(c["out_channels"] for c in convs) + sum(m.out_channels for m in head_convs),
        "params": params,
        "weight_bytes": weights,
        "state_neurons": neurons,
        "state_bytes_per_stream": held,
        "state_bytes_per_stream_packed": packed,
    }


def memory(model: SpikingYOLO) -> dict[str, int]:
    """Weight and per-stream state bytes of ``model`` (packed, int8, FP32) and of its dense FP32 reference."""
    own, dense = footprint(model), footprint(dense_reference(model.config))
    neurons = own["state_neurons"]
    quantized = model.config.neuron().quantize_membrane
    return {
        "params": own["params"],
        "params_dense": dense["params"],
        "weight_bytes": own["weight_bytes"],
        "fp32_weight_bytes": FP32_BYTES * dense["params"],
        "state_neurons": neurons,
        "state_bytes": own["state_bytes_per_stream_packed"],
        "state_bytes_int8": neurons if quantized else FP32_BYTES * neurons,
        "fp32_state_bytes": dense["state_bytes_per_stream"],
    }


def deployed_sizes(path: str | os.PathLike[str]) -> dict[str, int]:
    """What an exported model costs deployed: ``shipped_bytes`` (its ``.spq`` file) and ``shipped_header_bytes`` (of
    which the header), ``resident_model_bytes`` (what the torch-free runtime holds once it has loaded the file:
    every allocation still live after :meth:`NumpyRuntime.load`, measured with tracemalloc, numpy buffers included)
    and ``resident_state_bytes_per_stream`` (one stream's state as that runtime holds it: its footprint)."""
    from models.inference.numpy_runtime import NumpyRuntime  # numba: imported when a report needs it

    NumpyRuntime.load(path)  # a first load also fills module-level caches, which are not this model's
    runtime, resident = _retained(lambda: NumpyRuntime.load(path))
    return {"shipped_bytes": os.path.getsize(path), "shipped_header_bytes": header_nbytes(path),
            "resident_model_bytes": resident,
            "resident_state_bytes_per_stream": runtime.footprint()["state_bytes_per_stream"]}


def _retained(build: Callable[[], Any]) -> tuple[Any, int]:
    """``build()`` and the bytes it allocated that are still live while its result is held."""
    tracing = tracemalloc.is_tracing()  # someone else's trace (python -X tracemalloc) keeps running
    if not tracing:
        tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        built = build()
        gc.collect()
        return built, tracemalloc.get_traced_memory()[0] - before
    finally:
        if not tracing:
            tracemalloc.stop()


def export_sizes(model: SpikingYOLO) -> dict[str, int]:
    """:func:`deployed_sizes` of ``model``'s integer export, written to a temporary directory.

    Raises:
        ExportFormatError: the model has no integer form (an FP32 model, a leak that is no shift, ...).
    """
    with tempfile.TemporaryDirectory(prefix="spquant-report-") as tmp:
        return deployed_sizes(export_model(model, Path(tmp) / "model.spq"))


def model_report(
    model: SpikingYOLO,
    recordings: Iterable[str | os.PathLike[str]],
    max_windows: int = 200,
    tile: int = 1,
    progress: bool = False,
) -> dict[str, Any]:
    """Parameters, memory (packed, shipped, resident), FLOPs (dense, at kept widths, executed, event-driven), SynOps,
    energy and per-layer firing of ``model``.

    The executed and event-driven counts and the firing rates are measured by streaming ``recordings`` (at most
    ``max_windows`` windows, 0 = all) through the model as ``eval`` does; the shipped and resident sizes on a
    temporary export (None, with ``export_error`` saying why, for a model without an integer form).
    """
    model = model.eval()
    with FlopsCounter(model, tile) as counter:
        windows = run_recordings(model, recordings, max_windows, progress)
    layers = counter.layers()
    dense = {c.name: c for c in static_counts(dense_reference(model.config))}
    mem = memory(model)
    flops_dense = sum(c.flops for c in dense.values())
    flops_pruned = sum(c.flops for c in layers)
    flops_executed = sum(c.executed for c in layers)
    flops_effective = sum(c.effective for c in layers)
    memory_bytes = mem["weight_bytes"] + mem["state_bytes"]
    fp32_memory = mem["fp32_weight_bytes"] + mem["fp32_state_bytes"]
    try:
        deployed: dict[str, Any] = {**export_sizes(model), "export_error": None}
    except ExportFormatError as exc:
        deployed = {**dict.fromkeys(("shipped_bytes", "shipped_header_bytes", "resident_model_bytes",
                                     "resident_state_bytes_per_stream")), "export_error": str(exc)}
    shipped = deployed["shipped_bytes"]
    cfg = model.config
    dense_widths = dataclasses.replace(cfg, channels=()).widths()
    energy = sum(c.energy_pj() for c in layers) * _PJ_TO_UJ
    energy_dense = sum(c.flops for c in dense.values() if c.kind == "conv") * E_MAC_PJ * _PJ_TO_UJ
    return {
        "model": {"variant": cfg.variant, "scale": cfg.scale, "input": [cfg.input_width, cfg.input_height],
                  "bins": cfg.bins, "pruned": cfg.pruned, "weight_bits": cfg.weight_bits if cfg.quantized else 32,
                  "first_layer_bits": cfg.first_layer_bits if cfg.quantized else 32, "head_bits": cfg.head_bits,
                  "head_act_bits": cfg.head_act_bits},
        **mem,
        "memory_bytes": memory_bytes,
        "fp32_memory_bytes": fp32_memory,
        "memory_reduction": fp32_memory / memory_bytes,
        **deployed,
        "memory_reduction_shipped": None if shipped is None else fp32_memory / (shipped + mem["state_bytes"]),
        "flops_dense": flops_dense,
        "flops_pruned": flops_pruned,
        "flops_executed": flops_executed,
        "flops_effective": flops_effective,
        "flops_reduction": flops_dense / flops_executed,
        "flops_reduction_event_driven": flops_dense / flops_effective if flops_effective else math.inf,
        "flops_reduction_channels": flops_dense / flops_pruned,
        "flops_predictor": sum(c.predictor for c in layers),
        "gates": {c.name.removesuffix(".conv"): round(c.kept_fraction, 4) for c in layers if c.gated},
        "synops": sum(c.synops for c in layers),
        "head_flops_executed": sum(c.executed for c in layers if not c.spiking),
        "energy_uj_per_window": energy,
        "energy_uj_per_window_fp32_dense": energy_dense,
        "energy_reduction": energy_dense / energy if energy else math.inf,
        "energy_uj_per_window_int": sum(c.energy_pj(E_MAC_INT8_PJ, E_AC_INT_PJ) for c in layers) * _PJ_TO_UJ,
        "energy_constants": energy_constants(),
        "accounting": ACCOUNTING,
        "windows": windows,
        "tile": tile,
        "channels": {name: [width, dense_widths[name]] for name, width in cfg.widths().items()},
        "layers": [_layer_row(c, dense.get(c.name)) for c in layers],
    }


ACCOUNTING = {  # the report's definitions, kept in its JSON beside the figures
    "reference": "the FP32 dense model of the same scale and input (unpruned widths, 32-bit weights and membranes)",
    "flops_reduction": "flops_dense / flops_executed: conv MACs over the kept channels at every position plus "
                       "membrane updates of non-zero states (the paper's formula; what the runtimes execute); a "
                       "gated conv over the channels its gate kept in each window, plus the predictor's FLOPs",
    "gates": "per gated conv, the mean share of its output channels kept per window on the measured recordings",
    "flops_reduction_event_driven": "flops_dense / flops_effective: as executed, less every conv output position "
                                    "whose receptive field holds no non-zero input (at `tile` granularity): what "
                                    "event-driven hardware could skip; the runtimes run dense convs but for the "
                                    "first conv on sparse histograms and very sparse spike maps, and the executed "
                                    "count credits those savings nothing",
    "memory_reduction": "FP32 dense weights + state / (weights packed at their bits, the Detect head at head_bits, "
                        "BN, thresholds and biases FP32, + one stream's membrane state packed at the grid's bits)",
    "memory_reduction_shipped": "the same reference / (the exported .spq file + the packed state)",
    "resident": "resident_model_bytes: allocations the torch-free runtime (NumpyRuntime) holds after loading the "
                ".spq (tracemalloc); resident_state_bytes_per_stream: its int8 membrane codes per stream",
}


def energy_constants() -> dict[str, Any]:
    """The energy model's figures and their source (printed by ``spquant report``, kept in its JSON)."""
    return {
        "e_mac_pj": E_MAC_PJ, "e_ac_pj": E_AC_PJ, "source": ENERGY_SOURCE, "horowitz_pj": dict(HOROWITZ_PJ),
        "int_e_mac_pj": E_MAC_INT8_PJ, "int_e_ac_pj": E_AC_INT_PJ,
        "rule": "convs reading spikes: SynOps x E_AC; first conv (event counts) and head (firing rates): effective "
                "MACs x E_MAC; membrane updates and memory traffic not counted; FP32 dense: every MAC x E_MAC",
        "int_rule": "energy_uj_per_window_int: the same operations on integer units, int8 mult + int32 add per MAC, "
                    "int32 add per accumulate",
    }


def _layer_row(count: LayerCount, dense: LayerCount | None) -> dict[str, Any]:
    op, ops = count.energy_ops()
    row = {
        "name": count.name,
        "kind": count.kind,
        "channels": count.channels,
        "channels_dense": dense.channels if dense else count.channels,
        "flops_dense": dense.flops if dense else count.flops,
        "flops": count.flops,
        "flops_executed": count.executed,
        "flops_effective": count.effective,
        "active_fraction": round(count.active_fraction, 4),
        "energy_op": op,
        "energy_ops": ops,
        "energy_uj": count.energy_pj() * _PJ_TO_UJ,
    }
    if count.gated:
        row["kept_fraction"] = round(count.kept_fraction, 4)
    if count.kind == "membrane":
        row["firing_rate"] = round(count.firing_rate, 4)
    elif count.spiking:
        row["synops"] = count.synops
    return row
