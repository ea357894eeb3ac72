"""The Detect head for inference: fused (fewer, larger ops for the same outputs, to float rounding), and integer.

:class:`~models.networks.ultralytics_parts.Detect` runs, per level, a box branch (3×3 Conv-BN-SiLU twice, then a 1×1
conv) and a class branch (depthwise 3×3 then pointwise 1×1, twice, then a 1×1 conv): 9 convs, 7 BNs and 7 SiLUs per
level, weights fake-quantized on every call when ``head_bits`` < 32, then DFL box decoding on freshly built anchors.
At batch 1 on the small feature maps of an event camera, per-op overhead dominates. :class:`FusedDetect` is derived
from a loaded Detect once:

* the fake-quantized weights are computed once and every BN is folded into its conv (float64, then float32);
* per level, the box branch's first 3×3 conv and the class branch's depthwise 3×3 read the same input, so they run as
  one 3×3 conv (the depthwise kernel on the diagonal), and the two final 1×1 convs as one matmul (block-diagonal
  weights); every 1×1 conv is a matmul;
* anchors and strides are cached per input size, and the DFL expectation is a reduction over precomputed bin values.

Float32 summation orders differ from the unfused head, so outputs agree to float rounding, not bit for bit.
:class:`FusedDetect` fuses float SiLU heads only; a head with quantized activations (``QuantSiLU``) is exported as an
integer head and runs as :class:`IntegerDetect`, built from the ``.spq`` file's integer layers
(:func:`~models.inference.numpy_detect.integer_levels`): float32 GEMMs of integer codes (exact below 2^24), int64
fixed-point requantization and a SiLU table, float32 logits, DFL softmax and sigmoid in float64 rounded to float32
(so its outputs equal the numpy engine's bit for bit). ``fused=True`` (the kernels backend) uses the layout tricks
above and the compiled requantization kernel; ``fused=False`` (the reference backend, what ONNX traces) runs each
layer with PyTorch ops. Both give the same integers, hence the same outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.inference.numpy_detect import (
    IntegerLayer,
    IntegerLevel,
    IntegerOutput,
    Requantizer,
    block_diagonal,
    dense_depthwise,
)
from models.networks.ultralytics_parts import Conv, Detect, DWConv

MERGE_CHANNELS = 32  # merge the depthwise 3×3 into the box branch's 3×3 up to this many input channels (measured)


def _weight(conv: nn.Conv2d) -> Tensor:
    """The weight ``conv`` uses in its forward: fake-quantized (``QuantConv2d``) or as stored."""
    quantized = getattr(conv, "quantized_weight", None)
    return (quantized() if quantized is not None else conv.weight).detach()


def _fold(block: Conv) -> tuple[Tensor, Tensor]:
    """Conv-BN of an ultralytics ``Conv`` as one conv: float64 ``(weight, bias)`` with ``bn(conv(x)) = conv'(x)``."""
    conv, bn = block.conv, block.bn
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)  # [Cout]
    bias = bn.bias.double() - bn.running_mean.double() * scale
    if conv.bias is not None:
        bias = bias + conv.bias.double() * scale
    return _weight(conv).double() * scale.view(-1, 1, 1, 1), bias


def _plain(conv: nn.Conv2d) -> tuple[Tensor, Tensor]:
    """A plain conv's float64 ``(weight, bias)`` (zero bias where it has none)."""
    weight = _weight(conv).double()
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
    return weight, bias


def _is_silu_conv(block: nn.Module, kernel: int, depthwise: bool = False) -> bool:
    """``block`` is an ultralytics Conv(-BN-SiLU) with a ``kernel``-square, stride-1, 'same'-padded conv."""
    if not isinstance(block, Conv) or not isinstance(block.act, nn.SiLU) or not isinstance(block.bn, nn.BatchNorm2d):
        return False
    conv = block.conv
    groups_ok = conv.groups == conv.in_channels == conv.out_channels if depthwise else conv.groups == 1
    return (groups_ok and conv.kernel_size == (kernel, kernel) and conv.stride == (1, 1)
            and conv.padding == (kernel // 2, kernel // 2) and conv.dilation == (1, 1))


def _is_pointwise(conv: nn.Module) -> bool:
    return isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1


class _Level(nn.Module):
    """One level's box and class branches: rates ``[B, Cin, h, w]`` → raw ``[B, 4·reg_max + nc, h·w]``."""

    def __init__(self, box: nn.Sequential, cls: nn.Sequential, merge: bool | None = None) -> None:
        super().__init__()
        w_box0, b_box0 = _fold(box[0])
        w_dw0, b_dw0 = _fold(cls[0][0])
        cin = w_dw0.shape[0]
        self.split = w_box0.shape[0]  # first `split` channels: box branch; the rest: class branch
        # Depthwise 3×3 as a dense 3×3 with the kernel on the channel diagonal: one conv for both branches' first op.
        # It adds cin² zero-weight taps per position: worth a call's overhead only while cin is small.
        self.merged = cin <= MERGE_CHANNELS if merge is None else merge
        if self.merged:
            dense_dw = torch.zeros((cin, cin, 3, 3), dtype=torch.float64)
            dense_dw[torch.arange(cin), torch.arange(cin)] = w_dw0[:, 0]
            self._set("w0", torch.cat([w_box0, dense_dw]), "b0", torch.cat([b_box0, b_dw0]))
        else:
            self._set("w0", w_box0, "b0", b_box0)
            self._set("w_dw0", w_dw0, "b_dw0", b_dw0)
        w, b = _fold(box[1])
        self._set("w_box1", w, "b_box1", b)
        w, b = _fold(cls[0][1])
        self._set("w_cls1", w.flatten(1), "b_cls1", b.view(-1, 1))
        w, b = _fold(cls[1][0])
        self._set("w_cls2", w, "b_cls2", b)
        w, b = _fold(cls[1][1])
        self._set("w_cls3", w.flatten(1), "b_cls3", b.view(-1, 1))
        # The two final 1×1 convs as one matmul over [box features; class features] (block-diagonal weights)
        w_box, b_box = _plain(box[2])
        w_cls, b_cls = _plain(cls[2])
        out_box, in_box, out_cls, in_cls = w_box.shape[0], w_box.shape[1], w_cls.shape[0], w_cls.shape[1]
        final = torch.zeros((out_box + out_cls, in_box + in_cls), dtype=torch.float64)
        final[:out_box, :in_box] = w_box.flatten(1)
        final[out_box:, in_box:] = w_cls.flatten(1)
        self._set("w_out", final, "b_out", torch.cat([b_box, b_cls]).view(-1, 1))

    def _set(self, weight_name: str, weight: Tensor, bias_name: str, bias: Tensor) -> None:
        self.register_buffer(weight_name, weight.to(torch.float32).contiguous())
        self.register_buffer(bias_name, bias.to(torch.float32).contiguous())

    def forward(self, x: Tensor) -> Tensor:
        b, h, w = x.shape[0], x.shape[2], x.shape[3]
        first = F.silu(F.conv2d(x, self.w0, self.b0, 1, 1), inplace=True)  # [B, box0 (+ Cin), h, w]
        if self.merged:
            box, cls = first[:, :self.split], first[:, self.split:]
        else:
            box = first
            cls = F.silu(F.conv2d(x, self.w_dw0, self.b_dw0, 1, 1, 1, x.shape[1]), inplace=True)  # [B, Cin, h, w]
        box = F.silu(F.conv2d(box, self.w_box1, self.b_box1, 1, 1), inplace=True)  # [B, box1, h, w]
        cls = torch.matmul(self.w_cls1, cls.flatten(2)).add_(self.b_cls1)  # 1×1: [B, cls0, h·w]
        cls = F.silu(cls, inplace=True).view(b, -1, h, w)
        cls = F.silu(F.conv2d(cls, self.w_cls2, self.b_cls2, 1, 1, 1, cls.shape[1]), inplace=True)
        cls = F.silu(torch.matmul(self.w_cls3, cls.flatten(2)).add_(self.b_cls3), inplace=True)  # [B, cls1, h·w]
        return torch.matmul(self.w_out, torch.cat([box.flatten(2), cls], 1)).add_(self.b_out)


class _Decoding(nn.Module):
    """DFL box decoding of a head's raw outputs ``[B, 4·reg_max + nc, A]`` into ``[B, 4 + nc, A]`` (xywh pixels,
    sigmoid scores), the softmax and sigmoid in ``dtype``; anchors cached per input size."""

    def __init__(self, strides: Sequence[float], reg_max: int, nc: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.reg_max, self.nc = reg_max, nc
        self.strides = [float(s) for s in strides]
        self.register_buffer("bins", torch.arange(self.reg_max, dtype=dtype).view(1, 1, -1, 1))
        self._anchors: dict[tuple[tuple[int, int], ...], tuple[Tensor, Tensor]] = {}

    def anchors(self, sizes: tuple[tuple[int, int], ...]) -> tuple[Tensor, Tensor]:
        """Anchor centres ``[1, 2, A]`` (grid units) and strides ``[1, 1, A]`` for levels of ``sizes``, cached."""
        if sizes not in self._anchors:
            points, strides = [], []
            for (h, w), stride in zip(sizes, self.strides, strict=True):
                sy, sx = torch.meshgrid(torch.arange(h, dtype=torch.float32) + 0.5,
                                        torch.arange(w, dtype=torch.float32) + 0.5, indexing="ij")
                points.append(torch.stack((sx, sy)).view(2, -1))
                strides.append(torch.full((1, h * w), stride))
            self._anchors[sizes] = torch.cat(points, 1).unsqueeze(0), torch.cat(strides, 1).unsqueeze(0)
        return self._anchors[sizes]

    def decode(self, raw: Tensor, rates: list[Tensor]) -> Tensor:
        """``[B, 4 + nc, A]`` from the raw outputs of the levels of ``rates``."""
        b, a = raw.shape[0], raw.shape[2]
        anchors, strides = self.anchors(tuple((x.shape[2], x.shape[3]) for x in rates))
        # DFL: expected bin of each side's distribution
        logits = raw[:, :4 * self.reg_max].view(b, 4, self.reg_max, a).to(self.bins.dtype)
        dist = (logits.softmax(2) * self.bins).sum(2).float()  # [B, 4, A]
        lt, rb = dist[:, :2], dist[:, 2:]
        x1y1, x2y2 = anchors - lt, anchors + rb
        boxes = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * strides  # xywh, pixels
        return torch.cat((boxes, raw[:, 4 * self.reg_max:].to(self.bins.dtype).sigmoid().float()), 1)


class FusedDetect(_Decoding):
    """Inference-only Detect: ``rates`` (one ``[B, C, h, w]`` per level) → ``[B, 4 + nc, anchors]`` (xywh, sigmoid
    scores), as ``Detect(rates)[0]`` in eval mode."""

    def __init__(self, head: Detect, merge: bool | None = None) -> None:
        if not self.supports(head):
            raise ValueError("FusedDetect supports the non-legacy, non-end-to-end ultralytics Detect layout only")
        super().__init__(head.stride.tolist(), head.reg_max, head.nc, torch.float32)
        with torch.no_grad():  # constants: no autograd history from the head's parameters
            self.levels = nn.ModuleList(_Level(box, cls, merge) for box, cls in zip(head.cv2, head.cv3, strict=True))

    @staticmethod
    def supports(head: nn.Module) -> bool:
        """Whether ``head`` has the layout this module fuses, with float SiLUs (else use the head itself)."""
        if not isinstance(head, Detect) or getattr(head, "end2end", False) or head.reg_max <= 1:
            return False
        if getattr(head, "one2one_cv2", None) is not None or len(head.stride) != head.nl:
            return False
        for box, cls in zip(head.cv2, head.cv3, strict=True):
            if not (len(box) == 3 and _is_silu_conv(box[0], 3) and _is_silu_conv(box[1], 3)
                    and _is_pointwise(box[2]) and len(cls) == 3 and _is_pointwise(cls[2])):
                return False
            for pair in cls[:2]:
                if not (len(pair) == 2 and isinstance(pair[0], DWConv) and _is_silu_conv(pair[0], 3, depthwise=True)
                        and _is_silu_conv(pair[1], 1)):
                    return False
        return True

    def forward(self, rates: list[Tensor]) -> Tensor:
        raw = torch.cat([level(x) for level, x in zip(self.levels, rates, strict=True)], 2)  # [B, 4·reg + nc, A]
        return self.decode(raw, rates)


# ---------------------------------------------------------------------------------------------------- integer head


def _buffer(array: np.ndarray, dtype: torch.dtype) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)


class _IntegerConv(nn.Conv2d):
    """A hidden Conv-BN-SiLU of an integer head with PyTorch ops: integer codes ``[B, Cin, h, w]`` → codes
    ``[B, Cout, h, w]`` (float32 holding integers). A conv whose weight is the integer codes (so the accounting
    counts the head's convs and weights as it does a float head's)."""

    def __init__(self, layer: IntegerLayer) -> None:
        cout, fan_in, k = layer.weight.shape[:3]
        groups = cout if layer.depthwise else 1
        super().__init__(fan_in * groups, cout, k, padding=k // 2, groups=groups, bias=False)
        self.weight = nn.Parameter(_buffer(layer.weight, torch.float32), requires_grad=False)
        # per-channel [C, 1, 1] int64 constants: (acc·M + R) >> s, the shift as a divisor 2^s
        self.register_buffer("multiplier", _buffer(layer.multiplier, torch.int64).view(-1, 1, 1))
        self.register_buffer("offset", _buffer(layer.bias, torch.int64).view(-1, 1, 1))
        self.register_buffer("divisor", torch.ones_like(self.multiplier) << _buffer(layer.shift, torch.int64).view_as(
            self.multiplier))
        self.register_buffer("lut", _buffer(layer.lut, torch.float32))
        self.top = layer.top

    def forward(self, x: Tensor) -> Tensor:
        acc = self._conv_forward(x, self.weight, None)  # exact integers
        # ``>> s`` as a floor division by 2^s (the same integers; exportable to ONNX, as the backbone's maps)
        z = torch.div(acc.to(torch.int64) * self.multiplier + self.offset, self.divisor, rounding_mode="floor")
        return self.lut[z.clamp(-self.top, self.top) + self.top]


class _IntegerLogits(nn.Conv2d):
    """A final 1×1 conv of an integer head: codes ``[B, Cin, h, w]`` → float32 logits ``[B, Cout, h·w]``
    (a conv whose weight is the integer codes, as :class:`_IntegerConv`)."""

    def __init__(self, output: IntegerOutput) -> None:
        super().__init__(output.weight.shape[1], len(output.weight), 1)
        self.weight = nn.Parameter(_buffer(output.weight[:, :, None, None], torch.float32), requires_grad=False)
        self.bias = nn.Parameter(_buffer(output.bias.reshape(-1), torch.float32), requires_grad=False)
        self.register_buffer("scale", _buffer(output.scale, torch.float32))  # [Cout, 1]

    def forward(self, x: Tensor) -> Tensor:
        acc = torch.matmul(self.weight.flatten(1), x.flatten(2))  # exact integers [B, Cout, h·w]
        return acc * self.scale + self.bias.view(-1, 1)  # two roundings, as the numpy engine


class _IntegerLevel(nn.Module):
    """One level of an integer head, layer by layer with PyTorch ops: rates ``[B, Cin, h, w]`` → raw
    ``[B, 4·reg_max + nc, h·w]``."""

    def __init__(self, level: IntegerLevel) -> None:
        super().__init__()
        self.steps = level.steps
        self.box = nn.Sequential(*map(_IntegerConv, level.box))
        self.cls = nn.Sequential(*map(_IntegerConv, level.cls))
        self.box_out, self.cls_out = _IntegerLogits(level.box_out), _IntegerLogits(level.cls_out)

    def forward(self, x: Tensor) -> Tensor:
        counts = torch.round(x * self.steps)  # spike counts: rate × T is an integer up to float rounding
        return torch.cat([self.box_out(self.box(counts)), self.cls_out(self.cls(counts))], 1)


def _requantize(requantizer: Requantizer, acc: Tensor) -> Tensor:
    """Codes of the float32 accumulators ``acc`` ``[B, C, ...]`` (contiguous) by the compiled kernel."""
    out = torch.empty(acc.shape, dtype=torch.float32)
    shape = (acc.shape[0], acc.shape[1], -1)  # [B, C, P]
    requantizer(acc.numpy().reshape(shape), out.numpy().reshape(shape))
    return out


class _FusedIntegerLevel(nn.Module):
    """One level of an integer head with the layout tricks of :class:`_Level` and the compiled requantization:
    the same integers as :class:`_IntegerLevel`."""

    def __init__(self, level: IntegerLevel) -> None:
        super().__init__()
        box, cls = level.box, level.cls
        cin = cls[0].weight.shape[0]
        self.steps = level.steps
        self.split = box[0].weight.shape[0]
        self.merged = cin <= MERGE_CHANNELS
        if self.merged:
            self._set("w0", np.concatenate([box[0].weight, dense_depthwise(cls[0].weight)]))  # [box0 + Cin, Cin, 3, 3]
            self.act0 = Requantizer([box[0], cls[0]])
        else:
            self._set("w0", box[0].weight)
            self._set("w_dw0", cls[0].weight)
            self.act0, self.act_dw0 = Requantizer([box[0]]), Requantizer([cls[0]])
        self._set("w_box1", box[1].weight)
        self._set("w_cls1", cls[1].weight.reshape(len(cls[1].weight), -1))  # 1×1 as a matmul
        self._set("w_cls2", cls[2].weight)
        self._set("w_cls3", cls[3].weight.reshape(len(cls[3].weight), -1))
        self.act_box1 = Requantizer([box[1]])
        self.act_cls1, self.act_cls2, self.act_cls3 = (Requantizer([layer]) for layer in cls[1:])
        self._set("w_out", block_diagonal(level.box_out.weight, level.cls_out.weight))
        self._set("scale", np.concatenate([level.box_out.scale, level.cls_out.scale]))  # [no, 1]
        self._set("bias", np.concatenate([level.box_out.bias, level.cls_out.bias]))

    def _set(self, name: str, array: np.ndarray) -> None:
        self.register_buffer(name, _buffer(array, torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        b, h, w = x.shape[0], x.shape[2], x.shape[3]
        counts = torch.round(x * self.steps)  # spike counts
        first = _requantize(self.act0, F.conv2d(counts, self.w0, None, 1, 1))  # codes [B, box0 (+ Cin), h, w]
        if self.merged:
            box, cls = first[:, :self.split], first[:, self.split:]
        else:
            box = first
            cls = _requantize(self.act_dw0, F.conv2d(counts, self.w_dw0, None, 1, 1, 1, counts.shape[1]))
        box = _requantize(self.act_box1, F.conv2d(box, self.w_box1, None, 1, 1))  # [B, box1, h, w]
        cls = _requantize(self.act_cls1, torch.matmul(self.w_cls1, cls.flatten(2)))  # 1×1: [B, cls0, h·w]
        cls = _requantize(self.act_cls2, F.conv2d(cls.view(b, -1, h, w), self.w_cls2, None, 1, 1, 1, cls.shape[1]))
        cls = _requantize(self.act_cls3, torch.matmul(self.w_cls3, cls.flatten(2)))  # [B, cls1, h·w]
        acc = torch.matmul(self.w_out, torch.cat([box.flatten(2), cls], 1))  # exact integers [B, no, h·w]
        return acc.mul_(self.scale).add_(self.bias)  # two roundings, as the numpy engine


class IntegerDetect(_Decoding):
    """The integer head of an exported model (see the module docstring): ``rates`` (one ``[B, C, h, w]`` per level)
    → ``[B, 4 + nc, anchors]``, as :class:`FusedDetect`."""

    def __init__(self, levels: Sequence[IntegerLevel], strides: Sequence[float], reg_max: int, nc: int,
                 fused: bool = True) -> None:
        super().__init__(strides, reg_max, nc, torch.float64)
        outputs = {len(level.box_out.weight) + len(level.cls_out.weight) for level in levels}
        if outputs != {4 * reg_max + nc}:
            raise ValueError(f"the integer head outputs {sorted(outputs)} channels, expected 4·{reg_max} + {nc}")
        self.levels = nn.ModuleList(_FusedIntegerLevel(level) if fused else _IntegerLevel(level) for level in levels)

    def forward(self, rates: list[Tensor]) -> Tensor:
        raw = torch.cat([level(x) for level, x in zip(self.levels, rates, strict=True)], 2)  # [B, 4·reg + nc, A]
        return self.decode(raw, rates)
