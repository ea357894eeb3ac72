"""Per-input channel gates (SpQuant-SNN's mask predictor): a conv's output channels switched off per window and stream.

A :class:`ChannelGate` sits beside a ConvBN whose only reader is a LIF. Per window and stream it pools the conv's
input per input channel — the integer count ``c = Σ x`` over the window's ``T`` bins and ``H·W`` positions (spikes
or event counts) — and a 1×1 conv on the mean ``c / N`` (``N = T·H·W``) gives one logit per output channel. A
channel is kept when its logit is positive (``sigmoid > 0.5``); a dropped channel's input current is exactly 0 for
the whole window, so its neurons only leak, and an integer runtime does not compute it at all.

The decision is made on integers, so every backend makes the same one. The predictor's weights ``w [Cout, Cin]``
and bias ``b [Cout]`` are fake-quantized to :data:`GATE_BITS`-bit codes on one scale ``s`` (``max(|w|, |b|)`` on the
top code), and ``logit = s · (Σ c·w_code + b_code·N) / N``, whose sign is that of the integer

    ``score = Σ_i c_i · w_code[o, i] + b_code[o] · N``   →   keep ``o`` iff ``score > 0``,

computed exactly here in float64 (every term an integer below 2^53) and in int64 by the runtimes. In training the
forward uses that hard decision and the backward the sigmoid's gradient (straight-through); the predictor sees its
input detached, so it learns only through its own logits (the gate loss of :mod:`models.networks.sparsity` and the
detection loss through the mask), never by changing the conv's input.

Only a current read by one LIF alone may be gated (:func:`gateable`): zeroing a current that feeds a residual
``add`` or an FPN sum would change what other layers see.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from models.networks.graph import Graph

GATE_BITS = 8
_TOP = 2 ** (GATE_BITS - 1) - 1
_EPS = 1e-12
# a new gate keeps every channel (its logit is positive), so adding gates to a trained model changes nothing; small, so
# that training moves it within a fine-tune
INIT_BIAS = 0.25


@dataclasses.dataclass
class GateRecord:
    """What one gated conv did in one training window, for the gate loss: ``logits``, the hard ``keep`` mask with its
    straight-through gradient, the ``target`` mask (all ``[B, Cout]``) and the conv's FLOPs per output channel and
    stream (``Cin·k²·h'·w'·T``: what a dropped channel saves)."""

    logits: Tensor
    keep: Tensor
    target: Tensor
    channel_flops: float


class ChannelGate(nn.Module):
    """The mask predictor of one conv: ``gate(x) -> keep [B, Cout]`` (0/1, straight-through sigmoid gradient) for an
    input ``x [T, B, Cin, H, W]``.

    ``target_mass`` (set by the gate loss; None: off) makes a training forward append a :class:`GateRecord` with
    targets of that mass to :attr:`records` (:meth:`record`); the loss pops them after each unroll.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_area: int = 1) -> None:
        super().__init__()
        self.kernel_area = kernel_area  # k² of the gated conv: a dropped channel saves Cin·k² MACs per position
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels))
        self.bias = nn.Parameter(torch.full((out_channels,), INIT_BIAS))
        self.target_mass: float | None = None
        self.records: list[GateRecord] = []

    def codes(self) -> tuple[Tensor, Tensor, Tensor]:
        """Integer codes of the weight ``[Cout, Cin]`` and bias ``[Cout]`` (float tensors holding integers) and their
        one scale ``s``: ``w ≈ w_code·s``, ``b ≈ b_code·s``."""
        w, b = self.weight.detach(), self.bias.detach()
        scale = torch.maximum(w.abs().amax(), b.abs().amax()).clamp(min=_EPS) / _TOP
        return torch.round(w / scale).clamp(-_TOP, _TOP), torch.round(b / scale).clamp(-_TOP, _TOP), scale

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(keep, logits)``, both ``[B, Cout]``: the hard mask (forward) with the sigmoid's gradient (backward)."""
        x = x.detach()
        positions = x.shape[0] * x.shape[-2] * x.shape[-1]  # N = T·H·W
        counts = x.to(torch.float64).sum((0, 3, 4))  # [B, Cin], exact integers
        w_code, b_code, scale = self.codes()
        score = counts @ w_code.double().T + b_code.double() * positions  # [B, Cout], exact integers
        hard = (score > 0).to(self.weight.dtype)
        # the same logit in float: s·score/N, with straight-through codes so the gradient reaches w and b
        weight = self.weight + (w_code * scale - self.weight).detach()
        bias = self.bias + (b_code * scale - self.bias).detach()
        logits = (counts.to(weight.dtype) / positions) @ weight.T + bias
        soft = torch.sigmoid(logits)
        return hard + soft - soft.detach(), logits

    def record(self, keep: Tensor, logits: Tensor, current: Tensor) -> None:
        """Keep a training window's :class:`GateRecord` (when :attr:`target_mass` is set) for the conv output
        ``current`` ``[T, B, Cout, h, w]`` (before the mask)."""
        if self.target_mass is None or not self.training:
            return
        positions = current.shape[0] * current.shape[-2] * current.shape[-1]  # T·h'·w'
        flops = float(self.weight.shape[1] * self.kernel_area * positions)
        self.records.append(GateRecord(logits, keep, target_mask(current.detach(), self.target_mass), flops))


def channel_scores(current: Tensor) -> Tensor:
    """Each output channel's activation mass in a window, ``[B, Cout]`` of a current ``[T, B, Cout, h, w]``: the summed
    positive current over the bins and positions.

    The membrane integrates the current, so the positive charge a channel delivers over the window is what drives
    its neurons to fire (negative current only inhibits, and a dropped channel's neurons get 0 instead — the least
    disturbance). A sum rather than the paper's spatial max: the max of one window is set by a single pixel (a hot
    pixel, a noise burst), the sum by the whole window's drive, which is also the work the channel is worth.
    """
    return current.clamp(min=0).sum((0, 3, 4))


def target_mask(current: Tensor, mass: float) -> Tensor:
    """The target keep mask ``[B, Cout]`` of a conv output ``current [T, B, Cout, h, w]``: per stream, the channels
    of largest :func:`channel_scores`, in descending order, until their share of the total reaches ``mass`` (the
    channel that crosses it is kept); channels with a share ≤ 1e-5 are dropped. The paper's ``'mass'`` rule."""
    scores = channel_scores(current).double()  # [B, Cout]
    share = scores / scores.sum(1, keepdim=True).clamp(min=_EPS)
    ordered, order = share.sort(1, descending=True)
    before = ordered.cumsum(1) - ordered  # the mass of the channels ranked above
    keep_sorted = (before < mass) & (ordered > 1e-5)
    return torch.zeros_like(share).scatter(1, order, keep_sorted.double()).to(current.dtype)


def gateable(graph: Graph) -> list[str]:
    """The conv nodes whose current only one LIF reads: the ones a gate may zero (not a residual or FPN input)."""
    return [node.name for node in graph.of_kind("conv")
            if [r.kind for r in graph.readers(node.name)] == ["lif"]]


def gated(graph: Graph, names: list[str]) -> Graph:
    """``graph`` with the conv nodes ``names`` turned into ``gated_conv`` nodes (same module, inputs and group)."""
    chosen = set(names)
    return Graph(dataclasses.replace(n, kind="gated_conv") if n.name in chosen else n for n in graph.nodes)


def attach_gates(graph: Graph) -> Graph:
    """Give every :func:`gateable` conv of ``graph`` (a ConvBN module each) a fresh :class:`ChannelGate` and return
    the graph with them as ``gated_conv`` nodes."""
    names = gateable(graph)
    for name in names:
        conv_bn = graph[name].module
        conv = conv_bn.conv
        conv_bn.gate = ChannelGate(conv.in_channels, conv.out_channels, conv.kernel_size[0] * conv.kernel_size[1])
    return gated(graph, names)


def gates(model: nn.Module) -> list[ChannelGate]:
    """Every channel gate of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, ChannelGate)]
