"""The ultralytics Detect head as the detector uses it: built at the widths of a (pruned) config, and its channel table.

The head is ultralytics' module, not ours, so its inner layer graph is not part of :mod:`models.networks.graph`; the
one thing pruning must know about its insides is declared here once (:func:`head_channel_table`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from torch import nn

from models.networks.quant import QuantConfig, QuantConv2d, QuantSiLU
from models.networks.ultralytics_parts import Conv, Detect, DWConv


def detect_head(in_channels: int, levels: int, class_names: Sequence[str], reg_max: int, widths: Mapping[str, int],
                quant: QuantConfig, act_bits: int = 0) -> Detect:
    """ultralytics' Detect head over ``levels`` levels of ``in_channels``, with hidden widths ``head{k}.box.{0,1}`` /
    ``head{k}.cls.{0,1}`` from ``widths``, its convs fake-quantized by ``quant`` (none at 32 bits) and, with
    ``act_bits`` > 0, every hidden Conv-BN-SiLU's activation quantized (:class:`QuantSiLU`): an integer head."""
    nc = len(class_names)
    # ultralytics' parse_model sets Detect.legacy class-wide when it builds a v3/v5/v8/v9 model (e.g. a YOLOv8 in the
    # same process); our checkpoints hold the non-legacy class branch, so build it whatever that flag was left at
    legacy, Detect.legacy = Detect.legacy, False
    try:
        head = Detect(nc=nc, reg_max=reg_max, ch=(in_channels,) * levels)
    finally:
        Detect.legacy = legacy
    for k in range(levels):
        box0, box1, cls0, cls1 = (widths[f"head{k}.{name}"] for name in ("box.0", "box.1", "cls.0", "cls.1"))
        if (box0, box1) != (head.cv2[k][0].conv.out_channels, head.cv2[k][1].conv.out_channels):
            head.cv2[k] = nn.Sequential(
                Conv(in_channels, box0, 3), Conv(box0, box1, 3), nn.Conv2d(box1, 4 * reg_max, 1)
            )
        if (cls0, cls1) != (head.cv3[k][0][1].conv.out_channels, head.cv3[k][1][1].conv.out_channels):
            # the same layout as Detect's (non-legacy) class branch: depthwise 3×3 then pointwise, twice
            head.cv3[k] = nn.Sequential(
                nn.Sequential(DWConv(in_channels, in_channels, 3), Conv(in_channels, cls0, 1)),
                nn.Sequential(DWConv(cls0, cls0, 3), Conv(cls0, cls1, 1)),
                nn.Conv2d(cls1, nc, 1),
            )
    if not quant.full_precision:
        _quantize_convs(head.cv2, quant)
        _quantize_convs(head.cv3, quant)
    if act_bits:
        for branch in (head.cv2, head.cv3):
            for block in branch.modules():
                if isinstance(block, Conv):  # DWConv is a Conv too
                    block.act = QuantSiLU(act_bits)
    return head


def _quantize_convs(module: nn.Module, quant: QuantConfig) -> None:
    """Replace every plain ``nn.Conv2d`` below ``module`` by a fake-quantized one (same shape, weights and keys)."""
    for name, child in module.named_children():
        if type(child) is nn.Conv2d:
            conv = QuantConv2d(child.in_channels, child.out_channels, child.kernel_size, stride=child.stride,
                               padding=child.padding, dilation=child.dilation, groups=child.groups,
                               bias=child.bias is not None, quant=quant)
            conv.load_state_dict(child.state_dict())
            setattr(module, name, conv)
        else:
            _quantize_convs(child, quant)


@dataclasses.dataclass
class HeadChannels:
    """The head layers that one channel group touches at one level.

    ``group`` is a hidden width's name (``head{k}.box.0`` …), or None for the level's input (the group of the rate
    node the head reads there). ``produce`` is sliced on output channels, ``consume`` on input channels; ``gated``
    is the layer whose output a channel mask zeroes (and whose activation scores the channels).
    """

    group: str | None
    produce: list[nn.Module]
    consume: list[nn.Module]
    gated: nn.Module


def head_channel_table(head: Detect, level: int) -> list[HeadChannels]:
    """How channels flow through the box (``cv2``) and class (``cv3``) branches of ``head`` at ``level``."""
    box, cls = head.cv2[level], head.cv3[level]
    k = level
    return [
        # the input: the class branch's depthwise conv is sliced with it (one filter per input channel), and a
        # silent channel's depthwise output is SiLU(BN shift) ≠ 0, so the mask gates it
        HeadChannels(None, [cls[0][0].conv, cls[0][0].bn], [box[0].conv, cls[0][1].conv], cls[0][0]),
        HeadChannels(f"head{k}.box.0", [box[0].conv, box[0].bn], [box[1].conv], box[0]),
        HeadChannels(f"head{k}.box.1", [box[1].conv, box[1].bn], [box[2]], box[1]),
        HeadChannels(f"head{k}.cls.0", [cls[0][1].conv, cls[0][1].bn, cls[1][0].conv, cls[1][0].bn],
                     [cls[1][1].conv], cls[1][0]),
        HeadChannels(f"head{k}.cls.1", [cls[1][1].conv, cls[1][1].bn], [cls[2]], cls[1][1]),
    ]
