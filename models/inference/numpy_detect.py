"""The Detect head and NMS in numpy: the float end of the torch-free runtime (no torch, no ultralytics).

:class:`NumpyDetect` is :class:`~models.inference.fused_head.FusedDetect` rebuilt from a ``.spq`` file's ``head.*``
tensors: every BN folded into its conv (float64, then float32), the box branch's first 3×3 and the class branch's
depthwise 3×3 as one GEMM over one im2col (for up to ``MERGE_CHANNELS`` input channels), every 1×1 conv and the two
final 1×1 convs as one matmul, anchors cached, DFL as a softmax expectation. Activations are channel-major
(``[C, B, h, w]``: a conv is one GEMM ``W [Cout, Cin·k·k] @ cols [Cin·k·k, B·h·w]``). Float32 summation orders differ
from PyTorch's, so outputs agree with the torch runtime's head to float32 rounding, not bit for bit.

:func:`non_max_suppression` is ultralytics' ``non_max_suppression`` (the version pinned in the design notes, without
torchvision: its ``TorchNMS.nms``) for the one case the streaming detector uses: ``[B, 4 + nc, A]`` xywh boxes and
scores, best class per box, class-aware (boxes offset by ``class × max_wh``), ``conf > conf_thres``, IoU suppression
``> iou_thres``, at most ``max_det`` boxes, highest score first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.inference.kernels import im2col_kernel
from models.inference.spq import head_weight

MERGE_CHANNELS = 32  # as FusedDetect: merge the depthwise 3×3 into the box branch's 3×3 up to this many channels
BN_EPS = 1e-5  # ultralytics' Conv uses BatchNorm2d's default eps (not stored in the file)


def _silu(x: np.ndarray) -> np.ndarray:
    """SiLU in place on float32 ``x``: ``x · sigmoid(x)`` (exp overflows to inf for very negative x: gives -0)."""
    with np.errstate(over="ignore"):
        denominator = np.exp(-x)
    denominator += 1
    x /= denominator
    return x


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        out = np.exp(-x)
    out += 1
    return np.reciprocal(out, out=out)


def conv_cols(x: np.ndarray, k: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """The im2col GEMM operand of a ``k``×``k`` conv over channel-major ``x [C, N, H, W]``: ``[C·k·k, N·h·w]``."""
    c, n, h, w = x.shape
    out_h, out_w = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    cols = np.empty((c * k * k, n * out_h * out_w), dtype=np.float32)
    im2col_kernel(x, k, stride, padding, cols)
    return cols


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


class _Level:
    """One level's box and class branches: rates ``[Cin, B, h, w]`` → raw ``[4·reg_max + nc, B·h·w]``."""

    def __init__(self, head: _HeadTensors, level: int) -> None:
        box, cls = f"cv2.{level}", f"cv3.{level}"
        w_box0, b_box0 = head.folded(f"{box}.0")
        w_dw0, b_dw0 = head.folded(f"{cls}.0.0")
        cin = w_dw0.shape[0]
        if w_dw0.shape[1:] != (1, 3, 3) or w_box0.shape[1:] != (cin, 3, 3):
            raise ValueError(f"head level {level}: unexpected branch shapes {w_box0.shape}, {w_dw0.shape}")
        self.split = w_box0.shape[0]
        self.merged = cin <= MERGE_CHANNELS
        if self.merged:  # the depthwise kernel on the channel diagonal of a dense 3×3: one GEMM for both
            dense = np.zeros((cin, cin, 3, 3))
            dense[np.arange(cin), np.arange(cin)] = w_dw0[:, 0]
            self.w0, self.b0 = _f32(np.concatenate([w_box0, dense]).reshape(self.split + cin, -1)), _f32(
                np.concatenate([b_box0, b_dw0])[:, None])
        else:
            self.w0, self.b0 = _f32(w_box0.reshape(self.split, -1)), _f32(b_box0[:, None])
            self.w_dw0, self.b_dw0 = _f32(w_dw0.reshape(cin, 9, 1)), _f32(b_dw0[:, None])
        w, b = head.folded(f"{box}.1")
        self.w_box1, self.b_box1 = _f32(w.reshape(len(w), -1)), _f32(b[:, None])
        w, b = head.folded(f"{cls}.0.1")
        self.w_cls1, self.b_cls1 = _f32(w.reshape(len(w), -1)), _f32(b[:, None])
        w, b = head.folded(f"{cls}.1.0")
        self.w_cls2, self.b_cls2 = _f32(w.reshape(len(w), 9, 1)), _f32(b[:, None])
        w, b = head.folded(f"{cls}.1.1")
        self.w_cls3, self.b_cls3 = _f32(w.reshape(len(w), -1)), _f32(b[:, None])
        w_box, b_box = head.plain(f"{box}.2")
        w_cls, b_cls = head.plain(f"{cls}.2")
        final = np.zeros((len(w_box) + len(w_cls), w_box.shape[1] + w_cls.shape[1]))
        final[:len(w_box), :w_box.shape[1]] = w_box.reshape(len(w_box), -1)
        final[len(w_box):, w_box.shape[1]:] = w_cls.reshape(len(w_cls), -1)
        self.w_out, self.b_out = _f32(final), _f32(np.concatenate([b_box, b_cls])[:, None])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        _, b, h, w = x.shape
        cols = conv_cols(x, 3, 1, 1)  # [Cin·9, B·h·w]
        first = _silu(self.w0 @ cols + self.b0)  # [box0 (+ Cin), B·h·w]
        if self.merged:
            box, cls = first[:self.split], first[self.split:]
        else:
            box = first
            cls = _silu(_depthwise(cols, self.w_dw0) + self.b_dw0)
        box = _silu(self.w_box1 @ conv_cols(box.reshape(-1, b, h, w), 3, 1, 1) + self.b_box1)  # [box1, B·h·w]
        cls = _silu(self.w_cls1 @ cls + self.b_cls1)  # 1×1: [cls0, B·h·w]
        cls = _silu(_depthwise(conv_cols(cls.reshape(-1, b, h, w), 3, 1, 1), self.w_cls2) + self.b_cls2)
        cls = _silu(self.w_cls3 @ cls + self.b_cls3)  # [cls1, B·h·w]
        return self.w_out @ np.concatenate([box, cls]) + self.b_out  # [4·reg_max + nc, B·h·w]


def _depthwise(cols: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """A depthwise 3×3 from its im2col ``[C·9, P]`` and weights ``[C, 9, 1]``: ``[C, P]``."""
    return (cols.reshape(len(weight), 9, -1) * weight).sum(1)


class NumpyDetect:
    """Inference Detect head from a ``.spq`` file's tensors: ``rates`` (one channel-major ``[C, B, h, w]`` float32
    per level) → ``[B, 4 + nc, anchors]`` (xywh pixels, sigmoid scores), as the torch runtime's head."""

    def __init__(self, tensors: dict[str, np.ndarray], packed: dict[str, Any], strides: list[int], reg_max: int,
                 nc: int) -> None:
        head = _HeadTensors(tensors, packed)
        self.levels = [_Level(head, i) for i in range(len(strides))]
        self.strides, self.reg_max, self.nc = [float(s) for s in strides], reg_max, nc
        if self.levels[0].w_out.shape[0] != 4 * reg_max + nc:
            raise ValueError(f"head outputs {self.levels[0].w_out.shape[0]} channels, expected 4·{reg_max} + {nc}")
        self.bins = np.arange(reg_max, dtype=np.float32).reshape(1, 1, -1, 1)
        self._anchors: dict[tuple[tuple[int, int], ...], tuple[np.ndarray, np.ndarray]] = {}

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
        # [B, 4·reg_max + nc, A]: each level's [no, B, h·w] with anchors level after level
        raw = np.concatenate([level(x).reshape(-1, b, x.shape[2] * x.shape[3]).transpose(1, 0, 2)
                              for level, x in zip(self.levels, rates, strict=True)], 2)
        a = raw.shape[2]
        anchors, strides = self.anchors(tuple((x.shape[2], x.shape[3]) for x in rates))
        logits = raw[:, :4 * self.reg_max].reshape(b, 4, self.reg_max, a)
        e = np.exp(logits - logits.max(2, keepdims=True))
        dist = (e / e.sum(2, keepdims=True) * self.bins).sum(2)  # DFL: expected bin per side, [B, 4, A]
        x1y1, x2y2 = anchors - dist[:, :2], anchors + dist[:, 2:]
        boxes = np.concatenate(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * strides  # xywh, pixels
        return np.concatenate((boxes, _sigmoid(raw[:, 4 * self.reg_max:])), 1)


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
