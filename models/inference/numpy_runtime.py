"""The torch-free integer runtime: an exported ``.spq`` model run with numpy and numba alone (no torch, ultralytics).

``NumpyRuntime.load(path)`` rebuilds the network from the file; ``runtime(x, state) -> (y, state)`` has the
interface of :class:`~models.inference.runtime.Runtime` on numpy arrays: ``x`` uint8 ``[T, B, 2, H, W]`` counts,
``state`` a flat dict ``{lif name: int8 [B, C, h, w]}`` (the same codes, bit for bit, as the torch runtime's), ``y``
float32 ``[B, 4 + nc, anchors]``. The network is the exported layer graph run by :meth:`Graph.run
<models.networks.graph.Graph.run>` with :class:`NumpyOps`, one method per node kind, the same integer arithmetic
as the torch runtime (see :mod:`models.inference.export`):

* activations are channel-last, ``[T, B, h, w, A]`` with the channels padded to ``A``, a multiple of
  :data:`~models.inference.kernels.LANES` (the padding holds zeros), so a pixel's uint8 spikes are whole uint64
  words and its accumulators whole SIMD vectors;
* a k×k conv over spikes is event-driven: each spike adds its weight vectors to the outputs it reaches (work ∝
  spikes, the inner loop one vector add), up to a density of :data:`SPARSE_SPIKES`; above it, and for 1×1 convs, a
  float32 GEMM ``cols [T·B·h·w, k·k·C] @ W [k·k·C, Cout]`` whose result is already channel-last. Every GEMM runs
  on integer codes and integer inputs with partial sums below 2^24 (checked at export), so it is exact, as in the
  torch runtime;
* the first conv is event-driven (work ∝ events) on sparse histograms, as in the torch runtime;
* a gated conv (:mod:`models.networks.gates`) decides per window and stream in int64 which output channels to keep
  (the torch runtime's rule), then runs the same paths over gathered weight tables of the kept channels only and
  maps them itself; the dropped channels' currents are exact zeros, and its LIF reads the θ-unit currents as they are;
* the LIF and requantization are the compiled kernels of :mod:`models.inference.kernels`;
* the residual and FPN sums are int64 adds, in place where the graph says no one else reads the current;
* the Detect head is :class:`~models.inference.numpy_detect.NumpyDetect` (float32, agrees with the torch runtime's
  head to float32 rounding), and :func:`~models.inference.numpy_detect.non_max_suppression` is ultralytics' NMS.

Batches: B independent streams in one call, each with the results it gets alone. Thread-safe for independent
states: the runtime is only read (but for the head's anchor cache, filled idempotently), every call returns a new
state, and the compiled kernels and BLAS release the GIL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Self

import numpy as np

from models.inference.kernels import (
    LANES,
    conv_counts_kernel,
    conv_spikes_kernel,
    im2col_cl_kernel,
    lif_cl_kernel,
    map_cl_kernel,
)
from models.inference.numpy_detect import NumpyDetect, non_max_suppression
from models.inference.spq import ExportFormatError, conv_codes, read_spq, stored_nbytes
from models.networks.frozen_config import sensor_size
from models.networks.graph import CONV_KINDS, Graph, Node

try:  # caps BLAS threads per call (see NumpyRuntime); optional: without it BLAS keeps its own default
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover - threadpoolctl comes with the scientific stack
    ThreadpoolController = None

State = dict[str, np.ndarray]
SPARSE_INPUT = 0.05  # event histograms up to this density take the event-driven first conv (as the torch runtime)
# spike maps up to this density take the event-driven k×k conv, over stride s up to SPARSE_SPIKES / s (the GEMM has s²
# fewer outputs to compute; measured crossovers: ~25% at stride 1, ~12% at stride 2)
SPARSE_SPIKES = 0.25
LIF_BLOCK = 256  # membranes the channel-last LIF keeps in a local array (whole pixels; 2 KiB of int64)
_FLOAT_EXACT = 2**24  # integers below this are exact in float32
GATHER_CACHE = 256  # gathered weight tables a gated conv keeps, one per channel mask seen


_TEXT_FIELDS = ("variant", "scale")
_OPTIONAL_FIELDS = ("sensor_width", "sensor_height")  # 0 in files written before the fields existed


@dataclasses.dataclass(frozen=True)
class SpqConfig:
    """What a streaming pipeline and the service need of an exported model's detector config, read without torch
    (the fields of :class:`~models.networks.detector.DetectorConfig` they use); ``detector`` is the whole stored
    config (a dict, as ``DetectorConfig.to_dict`` wrote it)."""

    variant: str
    scale: str
    bins: int
    window_us: int
    input_height: int
    input_width: int
    cutoff: int
    reg_max: int
    weight_bits: int
    first_layer_bits: int
    class_names: tuple[str, ...]
    sensor_width: int = 0
    sensor_height: int = 0
    detector: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, detector: Mapping[str, Any]) -> SpqConfig:
        """The config of a ``.spq`` header's ``detector`` entry."""
        skip = ("class_names", "detector", *_TEXT_FIELDS, *_OPTIONAL_FIELDS)
        names = [f.name for f in dataclasses.fields(cls) if f.name not in skip]
        return cls(**{k: int(detector[k]) for k in names}, **{k: str(detector[k]) for k in _TEXT_FIELDS},
                   **{k: int(detector.get(k, 0)) for k in _OPTIONAL_FIELDS},
                   class_names=tuple(map(str, detector["class_names"])), detector=dict(detector))

    @property
    def sensor_size(self) -> tuple[int, int]:
        """(width, height) of the sensor the model expects: the recorded one, else the input size (as
        ``DetectorConfig.sensor_size``)."""
        return sensor_size(self.sensor_width, self.sensor_height, self.input_width, self.input_height)

    @property
    def padded_size(self) -> tuple[int, int]:
        """(height, width) of the network input after padding to a multiple of 32."""
        return -(-self.input_height // 32) * 32, -(-self.input_width // 32) * 32


class _Conv:
    """An integer conv: its weight codes as the channel-last tables of the event-driven conv (``scatter [S, k, k, A]``,
    an input channel's Cout weights innermost) and of the GEMM (``dense [k·k·S, A]``, rows ``(ky, kx, c)`` as
    :func:`~models.inference.kernels.im2col_cl_kernel`'s columns), zero in the padding channels (``S`` inputs, ``A``
    outputs); and its fixed-point map ``(M, R, s)``. ``first``: it reads the histogram (unpadded channels)."""

    def __init__(self, spec: Mapping[str, Any], tensors: dict[str, np.ndarray], name: str, first: bool) -> None:
        codes = conv_codes(tensors, name, spec)  # [Cout, Cin, k, k]
        cout, cin, k = codes.shape[:3]
        self.params = codes.size
        self.map = _map(tensors, name)
        self.out_channels, self.kernel = cout, k
        self.lanes = _round_up(cout, LANES)
        padded = cin if first else _round_up(cin, LANES)
        self.scatter = np.zeros((padded, k, k, self.lanes), dtype=np.float32)
        self.scatter[:cin, ..., :cout] = codes.transpose(1, 2, 3, 0)
        self.dense = np.ascontiguousarray(self.scatter.transpose(1, 2, 0, 3).reshape(-1, self.lanes))
        stride, padding = tuple(spec["stride"]), tuple(spec["padding"])
        if codes.shape[2] != codes.shape[3] or len(set(stride)) != 1 or len(set(padding)) != 1:
            raise ValueError(f"conv {name!r}: square kernels with equal strides and paddings only, got {spec}")
        self.stride, self.padding = stride[0], padding[0]
        self.output = spec["output"]
        if self.output not in ("theta", "real"):
            raise ValueError(f"conv {name!r}: output units {self.output!r}")
        self.gate: tuple[np.ndarray, np.ndarray] | None = None  # a gated conv's int64 codes: weight [Cout, Cin], bias
        if f"{name}.gate.weight" in tensors:
            self.gate = (tensors[f"{name}.gate.weight"].astype(np.int64), tensors[f"{name}.gate.bias"].astype(np.int64))
        self._gathered: dict[bytes, tuple[np.ndarray, ...]] = {}

    def keep(self, counts: np.ndarray, positions: int) -> np.ndarray:
        """The gate's decision: bool ``[B, Cout]`` from the window's input counts ``[B, Cin]`` int64 over ``positions``
        (T·H·W) — channel ``o`` kept iff ``Σ_i counts_i · w[o, i] + b[o] · positions > 0`` (as the torch runtime)."""
        weight, bias = self.gate
        return counts @ weight.T + bias * positions > 0

    def gathered(self, keep: np.ndarray) -> tuple[np.ndarray, ...]:
        """For the kept output channels (bool ``[Cout]``): the scatter and GEMM tables of those ``K`` channels only
        (lanes padded, always one zero lane past them), each output lane's source lane in that compact layout (``K``,
        the zero lane, for the dropped and padding channels) and the fixed-point map with the dropped channels' ``M``
        and ``R`` zeroed (their current: exactly 0). Cached by mask (masks recur from window to window; filled
        idempotently, so concurrent calls are safe)."""
        key = keep.tobytes()
        cached = self._gathered.get(key)
        if cached is None:
            channels = np.flatnonzero(keep)
            k = len(channels)
            lanes = _round_up(k + 1, LANES)
            scatter = np.zeros((*self.scatter.shape[:3], lanes), dtype=np.float32)
            scatter[..., :k] = self.scatter[..., channels]
            dense = np.zeros((self.dense.shape[0], lanes), dtype=np.float32)
            dense[:, :k] = self.dense[:, channels]
            source = np.full(self.lanes, k, dtype=np.intp)
            source[channels] = np.arange(k)
            mult, bias, shift = self.map
            cached = (scatter, dense, source, mult * keep, bias * keep, shift)
            if len(self._gathered) >= GATHER_CACHE:
                self._gathered.clear()
            self._gathered[key] = cached
        return cached

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return ((height + 2 * self.padding - self.kernel) // self.stride + 1,
                (width + 2 * self.padding - self.kernel) // self.stride + 1)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _map(tensors: dict[str, np.ndarray], name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fixed-point map's int64 ``(M, R, s)`` ``[C]``, as the compiled kernels take them."""
    return tuple(np.ascontiguousarray(tensors[f"{name}.{k}"], dtype=np.int64).reshape(-1)
                 for k in ("multiplier", "bias", "shift"))


class _LIF:
    """An integer LIF's constants (θ units ``Q(F)``; see :class:`models.inference.runtime.IntLIF`)."""

    def __init__(self, spec: Mapping[str, Any], tensors: dict[str, np.ndarray], name: str, frac_bits: int) -> None:
        self.channels = spec["channels"]
        self.map = _map(tensors, name) if spec["input"] == "stream" else None
        self.one = 1 << frac_bits
        self.leak_shift = -1 if spec["leak_shift"] is None else spec["leak_shift"]
        self.step_shift = spec["step_shift"]
        self.low, self.high = spec["code_min"] << self.step_shift, spec["code_max"] << self.step_shift
        self.half = 1 << (self.step_shift - 1)
        self.hard_reset = spec["reset"] == "hard"


class NumpyRuntime:
    """An exported integer detector without torch: ``runtime(x, state) -> (y, state)`` and ``init_state()``.

    ``x`` is uint8 ``[T, B, 2, H, W]`` (the histogram's counts, ``(H, W)`` = :attr:`config`'s ``padded_size``);
    ``state`` a flat dict ``{lif name: int8 [B, C, h, w]}`` or None for a fresh one; ``y`` float32 ``[B, 4 + nc,
    anchors]`` (xywh pixels, sigmoid scores). Raises ValueError for a malformed input or state.

    ``blas_threads`` caps the BLAS threads of each call (default 1; None: leave BLAS as it is). The GEMMs here are
    small, and OpenBLAS splitting them over threads that compete with other work for a few cores made a window
    2–4× slower on the shared 2-core machine (measured); concurrency across streams comes from batching and from
    callers' threads (the kernels and BLAS release the GIL).
    """

    def __init__(self, meta: dict[str, Any], tensors: dict[str, np.ndarray], source: Path | None = None,
                 blas_threads: int | None = 1) -> None:
        try:
            self.config = SpqConfig.from_dict(meta["detector"])
            graph = Graph.from_description(meta["graph"])
            self.convs = {n.name: _Conv(n.attrs, tensors, n.name, n.inputs[0] == graph.nodes[0].name)
                          for n in graph.of_kind(*CONV_KINDS)}
            self.lifs = {n.name: _LIF(n.attrs, tensors, n.name, meta["frac_bits"]) for n in graph.of_kind("lif")}
            (detect,) = graph.of_kind("detect")
            self.head = NumpyDetect(tensors, detect.attrs["head_weights"], detect.attrs["strides"],
                                    self.config.reg_max, len(self.config.class_names))
            if len(detect.inputs) != len(detect.attrs["strides"]):
                raise ValueError(f"detect reads {len(detect.inputs)} levels with {detect.attrs['strides']} strides")
        except (KeyError, TypeError, ValueError) as exc:
            where = f"{source}: " if source else ""
            raise ExportFormatError(f"{where}inconsistent integer model ({type(exc).__name__}: {exc})") from exc
        self.graph = graph
        self.source = source
        self.ops = NumpyOps(self)
        self.state_shapes = graph.state_shapes(*self.config.padded_size)
        self.weight_nbytes = stored_nbytes(tensors)  # as stored: packed codes, constants, head
        self._head_convs, self._head_params = _head_sizes(tensors, detect.attrs["head_weights"])
        self.frac_bits = int(meta["frac_bits"])
        self.blas_threads = blas_threads
        self._blas = ThreadpoolController() if blas_threads is not None and ThreadpoolController else None

    @classmethod
    def load(cls, path: str | os.PathLike[str], blas_threads: int | None = 1) -> Self:
        """The runtime of an exported ``.spq`` file (see :func:`models.inference.spq.read_spq` for the errors)."""
        meta, tensors = read_spq(path)
        return cls(meta, tensors, Path(path), blas_threads)

    def __call__(self, x: np.ndarray, state: State | None = None,
                 observe: Callable[[Node, Any], None] | None = None) -> tuple[np.ndarray, State]:
        """``(y, new state)``; ``observe(node, value)`` sees every node's output as the torch runtime's does (see
        :func:`batch_major`: read-only views in its layout, e.g. a LIF's spikes ``[T, B, C, h, w]``)."""
        height, width = self.config.padded_size
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8:
            raise ValueError(f"expected uint8 counts, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.ndim != 5 or x.shape[2] != 2 or x.shape[-2:] != (height, width) or x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"expected input [T, B, 2, {height}, {width}], got {tuple(x.shape)}")
        state = self.init_state(x.shape[1]) if state is None else state
        limit = (self._blas.limit(limits=self.blas_threads, user_api="blas") if self._blas is not None
                 else contextlib.nullcontext())
        with limit:
            return self.graph.run(self.ops, np.ascontiguousarray(x), state, None if observe is None else
                                  lambda node, value: observe(node, batch_major(value, self.ops.channels[node.name])))

    def init_state(self, batch: int = 1) -> State:
        """A fresh state (all membrane codes 0) for ``batch`` streams."""
        return {name: np.zeros((batch, *shape), dtype=np.int8) for name, shape in self.state_shapes.items()}

    def membrane_levels(self) -> list[float]:
        """The stored membrane levels in units of θ, ascending (every LIF of an exported model shares one grid):
        code × step, the step being ``2^step_shift`` in the ``Q(frac_bits)`` units of θ."""
        grids = {(lif.low, lif.high, lif.step_shift) for lif in self.lifs.values()}
        if len(grids) != 1:
            raise ValueError(f"the LIF layers do not share one membrane grid: {sorted(grids)}")
        ((low, high, shift),) = grids
        step = 2.0 ** (shift - self.frac_bits)
        return [code * step for code in range(low >> shift, (high >> shift) + 1)]

    def footprint(self) -> dict[str, int]:
        """The size figures of :func:`models.compress.accounting.footprint` for the integer runtime, computed here
        without torch (equal to that function on the torch :class:`~models.inference.runtime.Runtime` of the same
        file; tested): ``conv_layers``, ``channels``, ``params`` (weight codes plus the head's parameters),
        ``weight_bytes`` (as stored in the file), ``state_neurons`` and ``state_bytes_per_stream`` (int8 codes)."""
        convs = list(self.convs.values())
        neurons = sum(math.prod(shape) for shape in self.state_shapes.values())
        return {
            "conv_layers": len(convs) + len(self._head_convs),
            "channels": sum(c.out_channels for c in convs) + sum(self._head_convs),
            "params": sum(c.params for c in convs) + self._head_params,
            "weight_bytes": self.weight_nbytes,
            "state_neurons": neurons,
            "state_bytes_per_stream": neurons,
        }

    def detect(self, x: np.ndarray, state: State | None = None, conf_thres: float = 0.25, iou_thres: float = 0.6,
               max_det: int = 100) -> tuple[list[np.ndarray], State]:
        """Network and NMS: per stream ``[n, 6]`` rows ``x1, y1, x2, y2, score, class`` in input pixels, new state."""
        y, state = self(x, state)
        return non_max_suppression(y, conf_thres, iou_thres, max_det), state


def _channel_counts(x: np.ndarray, first: bool) -> np.ndarray:
    """A window's input summed per stream and channel, int64 ``[B, C]``: of the histogram ``[T, B, C, H, W]``
    (``first``) or of channel-last 0/1 spikes ``[T, B, H, W, A]``. A float32 matrix-vector product (several times
    faster than numpy's integer reduction over these axes) where it is exact — every partial sum an integer below
    2^24 — else the integer sum."""
    b = x.shape[1]
    if first:
        frames = x.transpose(1, 2, 0, 3, 4).reshape(b, x.shape[2], -1)  # [B, C, T·H·W]
        if frames.shape[-1] * int(np.iinfo(x.dtype).max) >= _FLOAT_EXACT:
            return frames.sum(-1, dtype=np.int64)
        return np.rint(frames.astype(np.float32) @ np.ones(frames.shape[-1], dtype=np.float32)).astype(np.int64)
    frames = x.transpose(1, 0, 2, 3, 4).reshape(b, -1, x.shape[-1])  # [B, T·H·W, A]
    if frames.shape[1] >= _FLOAT_EXACT:
        return frames.sum(1, dtype=np.int64)
    return np.rint(np.ones(frames.shape[1], dtype=np.float32) @ frames.astype(np.float32)).astype(np.int64)


def batch_major(value: np.ndarray, channels: int) -> np.ndarray:
    """A node's output in the torch runtime's layout, as a read-only view (no copy): channel-last ``[T, B, h, w,
    padded]`` → ``[T, B, channels, h, w]``, rates ``[C, B, h, w]`` → ``[B, C, h, w]``; the head's ``[B, 4 + nc, A]`` as
    it is."""
    if value.ndim == 5:
        value = value[..., :channels].transpose(0, 1, 4, 2, 3)
    elif value.ndim == 4:
        value = value.transpose(1, 0, 2, 3)
    else:
        value = value.view()
    value.flags.writeable = False  # observers must not change what the next node reads
    return value


def _head_sizes(tensors: Mapping[str, np.ndarray], packed: Mapping[str, Any]) -> tuple[list[int], int]:
    """The Detect head's conv output channels (one entry per conv, DFL included) and parameter count (conv weights
    and biases, BN weights and biases, as ``nn.Module.parameters`` counts them) from its ``head.*`` tensors."""
    convs, params = [], 0
    for name, tensor in tensors.items():
        key = name.removeprefix("head.")
        if key == name or key.endswith((".running_mean", ".running_var", ".num_batches_tracked")):
            continue
        if key in packed:  # packed codes: the weight's shape is in the description
            shape = tuple(packed[key]["shape"])
        elif key.endswith(".scale") and key.removesuffix(".scale") + ".weight" in packed:
            continue  # the per-channel scale of packed codes: part of the weight, not a parameter
        else:
            shape = tensor.shape
        params += math.prod(shape)
        if key.endswith(".weight") and len(shape) == 4:
            convs.append(int(shape[0]))
    return convs, params


class NumpyOps:
    """The runtime's integer arithmetic in numpy and numba, node kind by node kind, on channel-last arrays.

    A conv whose map has θ folded in (``output == "theta"``) hands its float32 accumulators ``[T, B, h, w, A]`` to
    the one LIF that reads it, which applies the conv's map; every other conv outputs ``Q(F)`` int64 currents.
    ``channels`` holds each node's real channel count (its arrays may be padded).
    """

    def __init__(self, runtime: NumpyRuntime) -> None:
        self.convs, self.lifs, self.head = runtime.convs, runtime.lifs, runtime.head
        graph = runtime.graph
        self.events = graph.nodes[0].name  # the input node: the event histogram [T, B, 2, H, W], not channel-last
        self.sparse_spikes = SPARSE_SPIKES
        # currents read by one node only (and not the caller's input): a join may add into them in place
        self.owned = {n.name for n in graph.nodes[1:] if len(graph.readers(n.name)) == 1}
        self.channels: dict[str, int] = {}
        for n in graph.nodes:
            if n.kind in CONV_KINDS:
                self.channels[n.name] = self.convs[n.name].out_channels
            elif n.kind == "lif":
                self.channels[n.name] = self.lifs[n.name].channels
            else:  # joins and rates keep their first input's channels; the input and the head have their own
                self.channels[n.name] = self.channels.get(n.inputs[0], 0) if n.inputs else 2
        # each LIF's input map (its own, or the θ map of the conv it reads) as lif_cl_kernel takes it: per channel,
        # padded with zeros to A, repeated over the pixels of one block
        self.lif_maps: dict[str, tuple[np.ndarray, ...]] = {}
        for n in graph.of_kind("lif"):
            lif = self.lifs[n.name]
            lanes = _round_up(lif.channels, LANES)
            pixels = max(1, LIF_BLOCK // lanes)
            if lif.map is not None:
                source = lif.map
            elif n.attrs["input"] == "gated":  # θ-unit currents from a gated conv: the identity map
                zeros = np.zeros(lif.channels, dtype=np.int64)
                source = (zeros + 1, zeros, zeros)
            else:
                source = self.convs[n.inputs[0]].map
            self.lif_maps[n.name] = tuple(np.tile(np.pad(v, (0, lanes - len(v))), pixels) for v in source)

    def conv(self, node: Node, x: np.ndarray) -> np.ndarray:
        conv = self.convs[node.name]
        acc = self._first(conv, x) if node.inputs[0] == self.events else self._spikes(conv, x)
        if conv.output == "theta":
            return acc  # [T, B, h, w, A] float32, mapped by the reading LIF
        out = np.empty(acc.shape, dtype=np.int64)
        map_cl_kernel(acc.reshape(-1, conv.lanes), *conv.map, out.reshape(-1, conv.lanes))
        return out

    def gated_conv(self, node: Node, x: np.ndarray) -> np.ndarray:
        """Per stream, only the output channels its gate keeps (gathered weight tables), mapped to θ-unit int64
        currents ``[T, B, h, w, A]``; the dropped channels' currents (and the padding) are exact zeros."""
        conv = self.convs[node.name]
        first = node.inputs[0] == self.events
        t, b = x.shape[:2]
        size = x.shape[3:] if first else x.shape[2:4]
        keep = conv.keep(_channel_counts(x, first)[:, :conv.gate[0].shape[1]], t * size[0] * size[1])  # [B, Cout]
        h, w = conv.output_size(*size)
        out = np.zeros((t, b, h, w, conv.lanes), dtype=np.int64)
        for i in range(b):
            if not keep[i].any():
                continue
            scatter, dense, source, *maps = conv.gathered(keep[i])
            stream = np.ascontiguousarray(x[:, i:i + 1])
            acc = self._first(conv, stream, scatter, dense) if first else self._spikes(conv, stream, scatter, dense)
            # the K computed lanes back to their channels (the dropped ones read the zero lane), then the map
            spread = np.take(acc.reshape(-1, acc.shape[-1]), source, axis=1)  # [T·h·w, A] float32
            target = out[:, 0] if b == 1 else np.empty((t, h, w, conv.lanes), dtype=np.int64)
            map_cl_kernel(spread, *maps, target.reshape(-1, conv.lanes))
            if b > 1:
                out[:, i] = target
        return out

    def _spikes(self, conv: _Conv, x: np.ndarray, scatter: np.ndarray | None = None,
                dense: np.ndarray | None = None) -> np.ndarray:
        """Accumulators ``[T, B, h, w, A]`` float32 of channel-last 0/1 spikes ``x [T, B, H, W, A_in]`` uint8 (with the
        conv's tables, or gathered ones: ``scatter``, ``dense``)."""
        scatter = conv.scatter if scatter is None else scatter
        dense = conv.dense if dense is None else dense
        lanes = dense.shape[1]
        t, b, height, width, padded = x.shape
        h, w = conv.output_size(height, width)
        frames = x.reshape(t * b, height, width, padded)
        if conv.kernel == 1 and conv.padding == 0:  # a 1×1 conv is a matmul over the (strided) pixels
            acc = np.asarray(frames[:, ::conv.stride, ::conv.stride], dtype=np.float32).reshape(-1, padded) @ dense
        elif np.count_nonzero(x) <= self.sparse_spikes / conv.stride * x.size:  # few: each spike adds its weights
            acc = np.zeros((t * b, h, w, lanes), dtype=np.float32)
            conv_spikes_kernel(frames, scatter, conv.stride, conv.padding, acc)
        else:
            cols = np.empty((t * b * h * w, conv.kernel**2 * padded), dtype=np.float32)
            im2col_cl_kernel(frames, conv.kernel, conv.stride, conv.padding, cols)
            acc = cols @ dense
        return acc.reshape(t, b, h, w, lanes)

    def _first(self, conv: _Conv, x: np.ndarray, scatter: np.ndarray | None = None,
               dense: np.ndarray | None = None) -> np.ndarray:
        """The first conv over the histogram ``x [T, B, 2, H, W]`` uint8: event-driven when sparse, else a GEMM."""
        scatter = conv.scatter if scatter is None else scatter
        dense = conv.dense if dense is None else dense
        lanes = dense.shape[1]
        t, b, cin, height, width = x.shape
        h, w = conv.output_size(height, width)
        frames = x.reshape(t * b, cin, height, width)
        if np.count_nonzero(x) <= SPARSE_INPUT * x.size and x.size % 8 == 0:  # the scan reads uint64 words
            acc = np.zeros((t * b, h, w, lanes), dtype=np.float32)
            conv_counts_kernel(frames, scatter, conv.stride, conv.padding, acc)
        else:
            cols = np.empty((t * b * h * w, conv.kernel**2 * cin), dtype=np.float32)
            # [T·B, H, W, 2]: a channel-last view of the input, read in place
            im2col_cl_kernel(frames.transpose(0, 2, 3, 1), conv.kernel, conv.stride, conv.padding, cols)
            acc = cols @ dense
        return acc.reshape(t, b, h, w, lanes)

    def lif(self, node: Node, x: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lif = self.lifs[node.name]
        t, b, h, w = x.shape[:4]
        shape = (b, lif.channels, h, w)
        if not isinstance(codes, np.ndarray) or codes.dtype != np.int8 or codes.shape != shape:
            raise ValueError(f"state {node.name!r}: expected int8 {shape}, got "
                             f"{getattr(codes, 'dtype', type(codes).__name__)} {tuple(getattr(codes, 'shape', ()))}")
        new = np.array(codes, order="C", copy=True)
        spikes = np.empty(x.shape, dtype=np.uint8)
        lif_cl_kernel(x.reshape(t, b, -1), *self.lif_maps[node.name], new.reshape(b, lif.channels, -1),
                      spikes.reshape(t, b, -1), lif.one, lif.leak_shift, lif.low, lif.high, lif.half, lif.step_shift,
                      lif.hard_reset)
        return spikes, new

    def add(self, node: Node, *xs: np.ndarray) -> np.ndarray:
        total = xs[0] if node.inputs[0] in self.owned else xs[0].copy()
        for x in xs[1:]:
            total += x
        return total

    def upsample_add(self, node: Node, fine: np.ndarray, coarse: np.ndarray) -> np.ndarray:
        """``fine + nearest-upsampled coarse`` for int64 ``[T, B, h, w, A]`` currents (source index ``floor(dst ·
        in / out)``); for an integer factor with the coarse value broadcast over each block (no upsampled copy)."""
        (h, w), (ch, cw) = fine.shape[2:4], coarse.shape[2:4]
        out = fine if node.inputs[0] in self.owned and fine.flags.c_contiguous else fine.copy()
        if h % ch or w % cw:
            rows, cols = np.arange(h) * ch // h, np.arange(w) * cw // w
            out += coarse[:, :, rows[:, None], cols]
        else:
            out.reshape(*out.shape[:2], ch, h // ch, cw, w // cw, out.shape[4])[...] += coarse[:, :, :, None, :, None]
        return out

    def rate(self, node: Node, spikes: np.ndarray) -> np.ndarray:
        # spike count / T as the torch runtime's mean (an exact count, one division): [T, B, h, w, A] → the head's
        # channel-major [C, B, h, w]
        counts = spikes[..., :self.channels[node.name]].sum(0, dtype=np.float32)
        return np.ascontiguousarray(np.moveaxis(counts, 3, 0)) / np.float32(spikes.shape[0])

    def detect(self, node: Node, *rates: np.ndarray) -> np.ndarray:
        return self.head(list(rates))
