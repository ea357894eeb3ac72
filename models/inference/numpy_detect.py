"""The Detect head and NMS in numpy: the float end of the torch-free runtime (no torch, no ultralytics).

:class:`NumpyDetect` is :class:`~models.inference.fused_head.FusedDetect` rebuilt from a ``.spq`` file's ``head.*``
tensors: every BN folded into its conv (float64, then float32), anchors cached, DFL as a softmax expectation.
Activations are channel-last, ``[P, C]`` with rows the positions ``(b, y, x)`` of all the batch's streams: a 3×3 conv
is an im2col of whole pixels (contiguous runs of C values) and one GEMM ``cols [P, 9·Cin] @ W [9·Cin, Cout]``, a
depthwise 3×3 a compiled loop over the activation (no im2col, no dense diagonal kernel), a 1×1 conv a GEMM on the
activation itself, and the two final 1×1 convs one GEMM per stream straight into the ``[B, 4·reg_max + nc, anchors]``
array the DFL decodes. The intermediate arrays are per-thread scratch, reused from call to call. Float32 summation
orders differ from PyTorch's, so outputs agree with the torch runtime's head to float32 rounding, not bit for bit.

An *integer head* (exported from a model with ``head_act_bits`` > 0; its ``head_weights`` entries carry ``act_bits``,
see :mod:`models.inference.export`) runs as integers up to its last two convs, with the same layout tricks: the
first convs read the level's spike counts (rate × ``input_steps``), every hidden conv is a float32 GEMM of integer
weight codes and integer activation codes (exact below 2^24, checked at export), then an int64 fixed-point
requantization to the pre-activation code, clamped, and the SiLU as a table lookup (:func:`requant_cl_kernel`); the
final 1×1 convs give ``acc · scale + bias`` in float32, and the DFL softmax and the class sigmoid run in float64,
rounded to float32. Every step is then either exact or correctly rounded, so the torch runtime's integer head
(:class:`~models.inference.fused_head.IntegerDetect`) gives the same outputs bit for bit. :func:`integer_levels`
reads the layers from the file for both runtimes.

:func:`non_max_suppression` is ultralytics' ``non_max_suppression`` (the version pinned in the design notes, without
torchvision: its ``TorchNMS.nms``) for the one case the streaming detector uses: ``[B, 4 + nc, A]`` xywh boxes and
scores, best class per box, class-aware (boxes offset by ``class × max_wh``), ``conf > conf_thres``, IoU suppression
``> iou_thres``, at most ``max_det`` boxes, highest score first.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from models.inference.kernels import depthwise_cl_kernel, im2col_cl_kernel, requant_cl_kernel, requant_kernel
from models.inference.spq import head_weight, unpack_codes

BN_EPS = 1e-5  # ultralytics' Conv uses BatchNorm2d's default eps (not stored in the file)
CHUNK_POSITIONS = 512  # a level runs on whole streams of up to this many positions at a time (at least one stream)


def _silu(x: np.ndarray, scratch: np.ndarray) -> None:
    """SiLU in place on float32 ``x``: ``x · sigmoid(x)`` (exp overflows to inf for very negative x: gives -0);
    ``scratch`` (``x``'s shape) holds the denominator."""
    np.negative(x, out=scratch)
    with np.errstate(over="ignore"):
        np.exp(scratch, out=scratch)
    scratch += 1
    x /= scratch


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        out = np.exp(-x)
    out += 1
    return np.reciprocal(out, out=out)


class _Scratch(threading.local):
    """Float32 scratch arrays reused from call to call, one set per thread (callers on several threads must not share
    them): fresh arrays of hundreds of kilobytes may be memory-mapped, and then page-faulted, anew on every call."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, rows: int, cols: int) -> np.ndarray:
        """``[rows, cols]`` C-contiguous, contents undefined (grown when ``rows`` is more than it holds)."""
        array = self.arrays.get(name)
        if array is None or array.shape[0] < rows or array.shape[1] != cols:
            array = self.arrays[name] = np.empty((rows, cols), dtype=np.float32)
        return array[:rows]


class _HeadTensors:
    """The ``head.*`` tensors of a ``.spq`` file: fake-quantized weights as ``codes × scale`` (float32, as the torch
    runtime forms them), BN folded in float64."""

    def __init__(self, tensors: dict[str, np.ndarray], packed: dict[str, Any]) -> None:
        self.tensors, self.packed = tensors, packed

    def weight(self, key: str) -> np.ndarray:
        """The float32 weight ``[Cout, Cin, k, k]`` stored under ``head.<key>``."""
        return head_weight(self.tensors, key, self.packed)

    def folded(self, prefix: str) -> tuple[np.ndarray, np.ndarray]:
        """Conv-BN ``prefix`` as one conv: float64 ``(weight [Cout, Cin, k, k], bias [Cout])``."""
        t = self.tensors
        scale = t[f"head.{prefix}.bn.weight"].astype(np.float64) / np.sqrt(
            t[f"head.{prefix}.bn.running_var"].astype(np.float64) + BN_EPS)
        bias = t[f"head.{prefix}.bn.bias"].astype(np.float64) - t[f"head.{prefix}.bn.running_mean"] * scale
        return self.weight(f"{prefix}.conv.weight").astype(np.float64) * scale.reshape(-1, 1, 1, 1), bias

    def plain(self, prefix: str) -> tuple[np.ndarray, np.ndarray]:
        """A plain conv with bias: float64 ``(weight, bias)``."""
        weight = self.weight(f"{prefix}.weight").astype(np.float64)
        bias = self.tensors.get(f"head.{prefix}.bias")
        return weight, (np.zeros(len(weight)) if bias is None else bias.astype(np.float64))


def _f32(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


def dense_depthwise(weight: np.ndarray) -> np.ndarray:
    """A depthwise ``[C, 1, k, k]`` kernel as a dense ``[C, C, k, k]`` one (the kernel on the channel diagonal; the
    torch runtime's merged layout)."""
    c = len(weight)
    dense = np.zeros((c, c, *weight.shape[2:]), dtype=weight.dtype)
    dense[np.arange(c), np.arange(c)] = weight[:, 0]
    return dense


def block_diagonal(box: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """The two final 1×1 convs ``[Cout, Cin]`` as one matmul over ``[box features; class features]``."""
    final = np.zeros((len(box) + len(cls), box.shape[1] + cls.shape[1]), dtype=box.dtype)
    final[:len(box), :box.shape[1]] = box
    final[len(box):, box.shape[1]:] = cls
    return final


def _gemm(weight: np.ndarray) -> np.ndarray:
    """A conv weight ``[Cout, Cin, k, k]`` as the channel-last GEMM operand ``[k·k·Cin, Cout]`` (rows ``(ky, kx, c)``,
    as :func:`~models.inference.kernels.im2col_cl_kernel`'s columns), float32."""
    return _f32(weight.transpose(2, 3, 1, 0).reshape(-1, len(weight)))


def _taps(weight: np.ndarray) -> np.ndarray:
    """A depthwise 3×3 weight ``[C, 1, 3, 3]`` as :func:`~models.inference.kernels.depthwise_cl_kernel` takes it:
    ``[9, C]`` float32."""
    return _f32(weight.reshape(len(weight), 9).T)


class _Level:
    """One level's box and class branches, channel-last: rates ``x [Cin, B, h, w]`` → ``out [B, 4·reg_max + nc,
    h·w]`` (a view, written in place). Activations are ``[P, C]``, rows the positions ``(b, y, x)``: a 3×3 conv is
    :func:`~models.inference.kernels.im2col_cl_kernel` and one GEMM, a depthwise 3×3 a compiled loop, a 1×1 a GEMM on
    the activation itself, the two final 1×1 convs one GEMM over ``[box features | class features]`` that writes
    the level's anchors of ``out``. Subclasses give the first convs' input, the activations and the output scaling.
    """

    def __init__(self, box: Sequence[np.ndarray], cls: Sequence[np.ndarray], box_out: np.ndarray,
                 cls_out: np.ndarray) -> None:
        # box: the branch's 3×3 weights, cls: depthwise 3×3, 1×1, depthwise 3×3, 1×1 (torch layouts); box_out,
        # cls_out: the final 1×1 convs [Cout, Cin]
        cin = cls[0].shape[0]
        if box[0].shape[1:] != (cin, 3, 3) or cls[0].shape[1:] != (1, 3, 3):
            raise ValueError(f"unexpected branch shapes {box[0].shape}, {cls[0].shape}")
        self.w_box0, self.w_box1 = _gemm(box[0]), _gemm(box[1])  # [9·Cin, box0], [9·box0, box1]
        self.w_cls0, self.w_cls2 = _taps(cls[0]), _taps(cls[2])  # [9, Cin], [9, cls0]
        self.w_cls1, self.w_cls3 = _gemm(cls[1]), _gemm(cls[3])  # [Cin, cls0], [cls0, cls1]
        self.w_out = _f32(block_diagonal(box_out, cls_out))  # [4·reg_max + nc, box1 + cls1]
        self.split = self.w_box1.shape[1]  # feature columns [0, split) are the box branch's
        self.scratch = _Scratch()

    def __call__(self, x: np.ndarray, out: np.ndarray) -> None:
        # a few streams at a time: the scratch arrays of CHUNK_POSITIONS positions stay in the L2 cache, which the
        # whole batch's (megabytes of im2col) would not (measured in place, batches of 8: 1.42 → 1.23 ms a window)
        streams = max(1, CHUNK_POSITIONS // (x.shape[2] * x.shape[3]))
        for start in range(0, x.shape[1], streams):
            self._streams(x[:, start:start + streams], out[start:start + streams])

    def _streams(self, x: np.ndarray, out: np.ndarray) -> None:
        c, b, h, w = x.shape
        p, scratch = b * h * w, self.scratch
        inputs = scratch.get("inputs", p, c)
        self._inputs(x, inputs.reshape(b, h, w, c))
        box = self._conv3(inputs, self.w_box0, (b, h, w), "box0")
        cls = self._depthwise(inputs, self.w_cls0, (b, h, w), "cls0")
        cls = self._depthwise(self._matmul(cls, self.w_cls1, "cls1"), self.w_cls2, (b, h, w), "cls2")
        features = scratch.get("features", p, self.w_out.shape[1])  # [box1 | cls1], activated at once
        self._conv3(box, self.w_box1, (b, h, w), "box1", features[:, :self.split])
        self._matmul(cls, self.w_cls3, "cls3", features[:, self.split:])
        self._act("features", features)
        # [no, box1 + cls1] @ [box1 + cls1, h·w] per stream, into the strided out: the DFL reduces over channels
        np.matmul(self.w_out, features.reshape(b, h * w, -1).transpose(0, 2, 1), out=out)
        self._output(out)

    def _conv3(self, x: np.ndarray, weight: np.ndarray, size: tuple[int, int, int], name: str,
               out: np.ndarray | None = None) -> np.ndarray:
        """3×3 conv (padding 1) of ``x [P, Cin]`` with ``weight [9·Cin, Cout]``: ``[P, Cout]``, activated unless it
        is written into ``out``."""
        cols = self.scratch.get(f"{name}.cols", len(x), weight.shape[0])
        im2col_cl_kernel(x.reshape(*size, -1), 3, 1, 1, cols)
        return self._matmul(cols, weight, name, out)

    def _matmul(self, x: np.ndarray, weight: np.ndarray, name: str, out: np.ndarray | None = None) -> np.ndarray:
        """``x [P, Cin] @ weight [Cin, Cout]``, activated unless it is written into ``out``."""
        if out is not None:
            return np.matmul(x, weight, out=out)
        out = np.matmul(x, weight, out=self.scratch.get(name, len(x), weight.shape[1]))
        self._act(name, out)
        return out

    def _depthwise(self, x: np.ndarray, weight: np.ndarray, size: tuple[int, int, int], name: str) -> np.ndarray:
        out = self.scratch.get(name, len(x), weight.shape[1])
        depthwise_cl_kernel(x.reshape(*size, -1), weight, out.reshape(*size, -1))
        self._act(name, out)
        return out

    def _inputs(self, x: np.ndarray, out: np.ndarray) -> None:
        """The first convs' input ``[B, h, w, Cin]`` from the rates ``x [Cin, B, h, w]``."""
        raise NotImplementedError

    def _act(self, name: str, acc: np.ndarray) -> None:
        """Layer ``name``'s activation of its accumulators ``acc [P, C]``, in place."""
        raise NotImplementedError

    def _output(self, out: np.ndarray) -> None:
        """The final convs' output from their accumulators ``out [B, 4·reg_max + nc, h·w]``, in place."""
        raise NotImplementedError


class _FloatLevel(_Level):
    """A float head's level: BN folded into each conv (float64, then float32), SiLU, rates in (see the module
    docstring)."""

    def __init__(self, head: _HeadTensors, level: int) -> None:
        box, cls = f"cv2.{level}", f"cv3.{level}"
        folded = [head.folded(f"{box}.{i}") for i in range(2)], [head.folded(f"{cls}.{i}.{j}") for i in range(2)
                                                                for j in range(2)]
        (w_box_out, b_box_out), (w_cls_out, b_cls_out) = head.plain(f"{box}.2"), head.plain(f"{cls}.2")
        super().__init__([w for w, _ in folded[0]], [w for w, _ in folded[1]],
                         w_box_out.reshape(len(w_box_out), -1), w_cls_out.reshape(len(w_cls_out), -1))
        names = ("box0", "box1", "cls0", "cls1", "cls2", "cls3")
        self.biases = {name: _f32(b) for name, (_, b) in zip(names, [*folded[0], *folded[1]], strict=True)}
        self.biases["features"] = np.concatenate([self.biases["box1"], self.biases["cls3"]])
        self.b_out = _f32(np.concatenate([b_box_out, b_cls_out])[:, None])
        self.widest = max(len(b) for b in self.biases.values())

    def _inputs(self, x: np.ndarray, out: np.ndarray) -> None:
        np.copyto(out, x.transpose(1, 2, 3, 0))

    def _act(self, name: str, acc: np.ndarray) -> None:
        acc += self.biases[name]
        _silu(acc, self.scratch.get("silu", len(acc), self.widest)[:, :acc.shape[1]])

    def _output(self, out: np.ndarray) -> None:
        out += self.b_out


# ---------------------------------------------------------------------------------------------------- integer head


def is_integer_head(packed: Mapping[str, Any]) -> bool:
    """Whether a detect node's ``head_weights`` describe an integer head (its hidden convs carry ``act_bits``)."""
    return any("act_bits" in spec for spec in packed.values())


def integer_branches(level: int) -> tuple[tuple[tuple[str, ...], str], ...]:
    """The box and class branches of an integer head at ``level``: the state-dict prefixes of their hidden
    Conv-BN-SiLU layers in order (the first reads the level's spike counts, each next one the codes of the one
    before), and of their final 1×1 conv."""
    return (((f"cv2.{level}.0", f"cv2.{level}.1"), f"cv2.{level}.2"),
            ((f"cv3.{level}.0.0", f"cv3.{level}.0.1", f"cv3.{level}.1.0", f"cv3.{level}.1.1"), f"cv3.{level}.2"))


# (kernel, depthwise) of each branch's hidden layers: the Detect layout the integer runtimes implement
_BOX_LAYERS = ((3, False), (3, False))
_CLS_LAYERS = ((3, True), (1, False), (3, True), (1, False))


@dataclasses.dataclass(frozen=True)
class IntegerLayer:
    """A hidden Conv-BN-SiLU of an integer head: output codes ``lut[clamp((acc·M + R) >> s, -top, top) + top]``, where
    ``acc`` is its conv of integer weight codes over integer input codes."""

    weight: np.ndarray  # [Cout, Cin / groups, k, k] float32 codes
    multiplier: np.ndarray  # [Cout] int64
    bias: np.ndarray  # [Cout] int64
    shift: np.ndarray  # [Cout] int64
    lut: np.ndarray  # [2·top + 1] float32: the output code of pre-activation code z sits at z + top
    top: int
    depthwise: bool  # one k×k filter per channel (weight [C, 1, k, k])


@dataclasses.dataclass(frozen=True)
class IntegerOutput:
    """A final 1×1 conv of an integer head: logits ``acc · scale + bias`` (float32) from its integer accumulators."""

    weight: np.ndarray  # [Cout, Cin] float32 codes
    scale: np.ndarray  # [Cout, 1] float32: weight scale × the scale of the codes it reads
    bias: np.ndarray  # [Cout, 1] float32


@dataclasses.dataclass(frozen=True)
class IntegerLevel:
    """One level of an integer head: its first layers read spike counts (rate × ``steps``); box branch 3×3, 3×3, then
    ``box_out``; class branch depthwise 3×3, 1×1, depthwise 3×3, 1×1, then ``cls_out``."""

    steps: int
    box: tuple[IntegerLayer, ...]
    box_out: IntegerOutput
    cls: tuple[IntegerLayer, ...]
    cls_out: IntegerOutput


def _codes(tensors: Mapping[str, np.ndarray], key: str, spec: Mapping[str, Any]) -> np.ndarray:
    """The weight codes stored under ``head.<key>`` (float32, as the GEMMs take them)."""
    shape = tuple(spec["shape"])
    return unpack_codes(tensors[f"head.{key}"], spec["bits"], int(np.prod(shape))).reshape(shape).astype(np.float32)


def integer_levels(tensors: Mapping[str, np.ndarray], packed: Mapping[str, Any], levels: int) -> list[IntegerLevel]:
    """The integer head's layers, level by level, from a ``.spq`` file's ``head.*`` tensors and ``head_weights``;
    ValueError where they do not form the Detect layout (channels chained, kernels and depthwise convs in place)."""
    out = []
    for level in range(levels):
        branches = integer_branches(level)
        (box, box_out), (cls, cls_out) = (_integer_branch(tensors, packed, hidden, final, layout)
                                          for (hidden, final), layout in zip(branches, (_BOX_LAYERS, _CLS_LAYERS),
                                                                             strict=True))
        steps = {int(packed[f"{hidden[0]}.conv.weight"]["input_steps"]) for hidden, _ in branches}
        if len(steps) != 1 or box[0].weight.shape[1] != cls[0].weight.shape[0]:
            raise ValueError(f"head level {level}: its branches read {box[0].weight.shape[1]} and "
                             f"{cls[0].weight.shape[0]} channels, counts of {sorted(steps)} steps")
        out.append(IntegerLevel(steps.pop(), box, box_out, cls, cls_out))
    return out


def _integer_branch(tensors: Mapping[str, np.ndarray], packed: Mapping[str, Any], hidden: Sequence[str], final: str,
                    layout: Sequence[tuple[int, bool]]) -> tuple[tuple[IntegerLayer, ...], IntegerOutput]:
    """One branch's hidden layers (``layout``: kernel and depthwise of each) and final conv, each reading the
    channels of the one before."""
    layers, channels = [], None
    for name, (kernel, depthwise) in zip(hidden, layout, strict=True):
        spec = packed[f"{name}.conv.weight"]
        weight = _codes(tensors, f"{name}.conv.weight", spec)
        cout = len(weight)
        inputs = channels if channels is not None else cout if depthwise else weight.shape[1]
        expected = (cout, 1, kernel, kernel) if depthwise else (cout, inputs, kernel, kernel)
        if weight.shape != expected or (depthwise and inputs != cout):
            raise ValueError(f"head.{name}: weight {weight.shape} where the layout needs {expected} on {inputs} "
                             f"channels")
        top = 2 ** (int(spec["act_bits"]) - 1) - 1
        maps = [np.ascontiguousarray(tensors[f"head.{name}.{k}"], dtype=np.int64)
                for k in ("multiplier", "bias", "shift")]
        lut = tensors[f"head.{name}.lut"].astype(np.float32)
        if len(lut) != 2 * top + 1 or any(m.shape != (cout,) for m in maps):
            raise ValueError(f"head.{name}: requantization tables do not fit {cout} channels of {spec['act_bits']}-bit "
                             f"codes")
        layers.append(IntegerLayer(weight, *maps, lut, top, depthwise))
        channels = cout
    weight = _codes(tensors, f"{final}.weight", packed[f"{final}.weight"])
    if weight.shape[1:] != (channels, 1, 1):
        raise ValueError(f"head.{final}: weight {weight.shape} after {channels} channels")
    scale, bias = (tensors[f"head.{final}.{k}"].astype(np.float32).reshape(-1, 1) for k in ("scale", "bias"))
    if not scale.shape == bias.shape == (len(weight), 1):
        raise ValueError(f"head.{final}: {len(scale)} scales and {len(bias)} biases for {len(weight)} channels")
    return tuple(layers), IntegerOutput(weight.reshape(len(weight), -1), scale, bias)


class Requantizer:
    """The requantization and SiLU table of integer layers whose outputs are stacked on channels (a merged conv)."""

    def __init__(self, layers: Sequence[IntegerLayer]) -> None:
        self.multiplier, self.bias, self.shift = (np.concatenate([getattr(layer, k) for layer in layers])
                                                  for k in ("multiplier", "bias", "shift"))
        self.table = np.repeat(np.arange(len(layers)), [len(layer.multiplier) for layer in layers])  # channel → lut
        self.luts = np.stack([layer.lut for layer in layers])  # [layers, 2·top + 1]
        self.top = layers[0].top
        if any(layer.top != self.top for layer in layers):
            raise ValueError("stacked integer layers must share their activation bits")

    def __call__(self, acc: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Codes (float32) of the float32 accumulators ``acc`` ``[C, P]`` or ``[N, C, P]`` (C-contiguous)."""
        out = np.empty(acc.shape, dtype=np.float32) if out is None else out
        view = (1, *acc.shape) if acc.ndim == 2 else acc.shape
        requant_kernel(acc.reshape(view), self.multiplier, self.bias, self.shift, self.table, self.luts, self.top,
                       out.reshape(view))
        return out

    def channel_last(self, acc: np.ndarray, out: np.ndarray) -> None:
        """Codes (float32) of the float32 accumulators ``acc [P, C]`` into ``out [P, C]`` (any strides; may be
        ``acc``)."""
        requant_cl_kernel(acc, self.multiplier, self.bias, self.shift, self.table, self.luts, self.top, out)


class _IntegerLevel(_Level):
    """One level of an integer head (see the module docstring): its first convs read the spike counts, every hidden
    conv is requantized to codes (:func:`~models.inference.kernels.requant_cl_kernel`), the final convs give ``acc ·
    scale + bias``."""

    def __init__(self, level: IntegerLevel) -> None:
        super().__init__([layer.weight for layer in level.box], [layer.weight for layer in level.cls],
                         level.box_out.weight, level.cls_out.weight)
        self.steps = np.float32(level.steps)
        names = ("box0", "box1", "cls0", "cls1", "cls2", "cls3")
        self.requantizers = {name: Requantizer([layer]) for name, layer in zip(names, [*level.box, *level.cls],
                                                                               strict=True)}
        self.scale = _f32(np.concatenate([level.box_out.scale, level.cls_out.scale]))  # [no, 1]
        self.bias = _f32(np.concatenate([level.box_out.bias, level.cls_out.bias]))

    def _inputs(self, x: np.ndarray, out: np.ndarray) -> None:
        np.multiply(x.transpose(1, 2, 3, 0), self.steps, out=out)  # the spike counts
        np.rint(out, out=out)

    def _act(self, name: str, acc: np.ndarray) -> None:
        if name == "features":  # the box and class branches' last layers side by side
            self._act("box1", acc[:, :self.split])
            self._act("cls3", acc[:, self.split:])
        else:
            self.requantizers[name].channel_last(acc, acc)

    def _output(self, out: np.ndarray) -> None:
        out *= self.scale  # exact integer accumulators times the scale, then the bias: two roundings (no fused
        out += self.bias  # multiply-add), as the torch runtime


# -------------------------------------------------------------------------------------------------------- the head


class NumpyDetect:
    """Inference Detect head from a ``.spq`` file's tensors: ``rates`` (one channel-major ``[C, B, h, w]`` float32
    per level) → ``[B, 4 + nc, anchors]`` (xywh pixels, sigmoid scores), as the torch runtime's head.

    ``packed`` is the detect node's ``head_weights``: a float head (fake-quantized weights or not) or an integer head
    (:func:`is_integer_head`), whose DFL softmax and sigmoid run in float64 (see the module docstring). Thread-safe:
    the scratch arrays are per thread.
    """

    def __init__(self, tensors: dict[str, np.ndarray], packed: dict[str, Any], strides: list[int], reg_max: int,
                 nc: int) -> None:
        self.levels: list[_Level]
        if is_integer_head(packed):
            self.levels = [_IntegerLevel(level) for level in integer_levels(tensors, packed, len(strides))]
            self.precision = np.float64
        else:
            head = _HeadTensors(tensors, packed)
            self.levels = [_FloatLevel(head, i) for i in range(len(strides))]
            self.precision = np.float32
        self.strides, self.reg_max, self.nc = [float(s) for s in strides], reg_max, nc
        self.outputs = 4 * reg_max + nc
        if self.levels[0].w_out.shape[0] != self.outputs:
            raise ValueError(f"head outputs {self.levels[0].w_out.shape[0]} channels, expected 4·{reg_max} + {nc}")
        self.bins = np.arange(reg_max, dtype=self.precision).reshape(1, 1, -1, 1)
        self._anchors: dict[tuple[tuple[int, int], ...], tuple[np.ndarray, np.ndarray]] = {}
        self.scratch = _Scratch()

    def anchors(self, sizes: tuple[tuple[int, int], ...]) -> tuple[np.ndarray, np.ndarray]:
        """Anchor centres ``[1, 2, A]`` (grid units) and strides ``[1, 1, A]`` for levels of ``sizes``, cached."""
        if sizes not in self._anchors:
            points, strides = [], []
            for (h, w), stride in zip(sizes, self.strides, strict=True):
                sy, sx = np.meshgrid(np.arange(h, dtype=np.float32) + 0.5, np.arange(w, dtype=np.float32) + 0.5,
                                     indexing="ij")
                points.append(np.stack((sx, sy)).reshape(2, -1))
                strides.append(np.full((1, h * w), stride, dtype=np.float32))
            self._anchors[sizes] = np.concatenate(points, 1)[None], np.concatenate(strides, 1)[None]
        return self._anchors[sizes]

    def __call__(self, rates: list[np.ndarray]) -> np.ndarray:
        b = rates[0].shape[1]
        anchors, strides = self.anchors(tuple((x.shape[2], x.shape[3]) for x in rates))
        a, r = anchors.shape[2], self.reg_max
        raw = self.scratch.get("raw", b * self.outputs, a).reshape(b, self.outputs, a)  # anchors level after level
        start = 0
        for level, x in zip(self.levels, rates, strict=True):
            level(x, raw[:, :, start:start + x.shape[2] * x.shape[3]])
            start += x.shape[2] * x.shape[3]
        logits = raw[:, :4 * r].reshape(b, 4, r, a).astype(self.precision, copy=False)
        e = np.exp(logits - logits.max(2, keepdims=True))  # reductions over a non-innermost axis: whole rows at once
        # DFL: expected bin per side, [B, 4, A] float32
        dist = (e / e.sum(2, keepdims=True) * self.bins).sum(2).astype(np.float32, copy=False)
        x1y1, x2y2 = anchors - dist[:, :2], anchors + dist[:, 2:]
        boxes = np.concatenate(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * strides  # xywh, pixels
        scores = _sigmoid(raw[:, 4 * r:].astype(self.precision)).astype(np.float32, copy=False)
        return np.concatenate((boxes, scores), 1)


def non_max_suppression(y: np.ndarray, conf_thres: float = 0.25, iou_thres: float = 0.6, max_det: int = 100,
                        max_nms: int = 30000, max_wh: int = 7680) -> list[np.ndarray]:
    """ultralytics' ``non_max_suppression`` in numpy: ``y [B, 4 + nc, A]`` → per image ``[n, 6]`` float32 rows
    ``x1, y1, x2, y2, score, class``, highest score first (see the module docstring for the semantics)."""
    if not (0 <= conf_thres <= 1 and 0 <= iou_thres <= 1):
        raise ValueError(f"thresholds must lie in [0, 1], got conf {conf_thres}, iou {iou_thres}")
    # float32 thresholds: torch compares a float32 tensor with a Python float in float32
    conf_thres, iou_thres = np.float32(conf_thres), np.float32(iou_thres)
    output = []
    for pred in y:  # [4 + nc, A]
        scores = pred[4:]
        keep = scores.max(0) > conf_thres
        x = pred[:, keep].T  # [n, 4 + nc]
        if not len(x):
            output.append(np.zeros((0, 6), dtype=np.float32))
            continue
        half = x[:, 2:4] / 2
        box = np.concatenate((x[:, :2] - half, x[:, :2] + half), 1)  # xyxy
        cls = x[:, 4:]
        j = cls.argmax(1)
        conf = cls[np.arange(len(cls)), j]
        dets = np.concatenate((box, conf[:, None], j[:, None].astype(np.float32)), 1)[conf > conf_thres]
        if len(dets) > max_nms:
            dets = dets[np.argsort(-dets[:, 4], kind="stable")[:max_nms]]
        i = _nms(dets[:, :4] + dets[:, 5:6] * np.float32(max_wh), dets[:, 4], iou_thres)[:max_det]
        output.append(dets[i])
    return output


def _nms(boxes: np.ndarray, scores: np.ndarray, iou_thres: np.float32) -> np.ndarray:
    """Greedy NMS as ultralytics' ``TorchNMS.nms``: indices kept, by descending score (float32 arithmetic)."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        if not rest.size:
            break
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
        h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
        inter = w * h
        if inter.sum() == 0:  # no overlap with the kept box: all stay
            order = rest
            continue
        order = rest[inter / (areas[i] + areas[rest] - inter) <= iou_thres]
    return np.asarray(keep, dtype=np.int64)
