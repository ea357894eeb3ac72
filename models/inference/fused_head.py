"""The ultralytics Detect head for inference, fused: fewer, larger ops for the same outputs (to float rounding).

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
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

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


class FusedDetect(nn.Module):
    """Inference-only Detect: ``rates`` (one ``[B, C, h, w]`` per level) → ``[B, 4 + nc, anchors]`` (xywh, sigmoid
    scores), as ``Detect(rates)[0]`` in eval mode."""

    def __init__(self, head: Detect, merge: bool | None = None) -> None:
        super().__init__()
        if not self.supports(head):
            raise ValueError("FusedDetect supports the non-legacy, non-end-to-end ultralytics Detect layout only")
        with torch.no_grad():  # constants: no autograd history from the head's parameters
            self.levels = nn.ModuleList(_Level(box, cls, merge) for box, cls in zip(head.cv2, head.cv3, strict=True))
        self.reg_max, self.nc = head.reg_max, head.nc
        self.strides = [float(s) for s in head.stride.tolist()]
        self.register_buffer("bins", torch.arange(self.reg_max, dtype=torch.float32).view(1, 1, -1, 1))
        self._anchors: dict[tuple[tuple[int, int], ...], tuple[Tensor, Tensor]] = {}

    @staticmethod
    def supports(head: nn.Module) -> bool:
        """Whether ``head`` has the layout this module fuses (else use the head itself)."""
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

    def forward(self, rates: list[Tensor]) -> Tensor:
        raw = torch.cat([level(x) for level, x in zip(self.levels, rates, strict=True)], 2)  # [B, 4·reg + nc, A]
        b, a = raw.shape[0], raw.shape[2]
        anchors, strides = self.anchors(tuple((x.shape[2], x.shape[3]) for x in rates))
        # DFL: expected bin of each side's distribution
        dist = (raw[:, :4 * self.reg_max].view(b, 4, self.reg_max, a).softmax(2) * self.bins).sum(2)  # [B, 4, A]
        lt, rb = dist[:, :2], dist[:, 2:]
        x1y1, x2y2 = anchors - lt, anchors + rb
        boxes = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * strides  # xywh, pixels
        return torch.cat((boxes, raw[:, 4 * self.reg_max:].sigmoid()), 1)
