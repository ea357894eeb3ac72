"""Spiking building blocks over ``[T, B, C, H, W]``: conv → BN → integer LIF, and the membrane-shortcut residual.

Every block takes its bit widths as configuration: a :class:`~models.quant.QuantConfig` for the weights and a
:class:`~models.neuron.NeuronConfig` for the membrane. The full-precision baseline is the same classes with
``QuantConfig(weight_bits=32)`` and ``NeuronConfig(quantize_membrane=False)``. Convolutions and BN run on all
time steps at once (time folded into the batch), so in training BN statistics pool over ``T·B``; in eval mode
a single-step call gives the same result as a multi-step call.
"""

from __future__ import annotations

from torch import Tensor, nn

from models.neuron import IntegerLIF, NeuronConfig
from models.quant import QuantConfig, QuantConv2d
from models.state import State


class ConvBN(nn.Module):
    """Fake-quantized conv (no bias) + BatchNorm on every time step: ``[T, B, Cin, H, W] -> [T, B, Cout, H', W']``.

    Also accepts a single step ``[B, Cin, H, W]``, and bool spikes from an int8-state neuron.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 quant: QuantConfig | None = None) -> None:
        super().__init__()
        self.conv = QuantConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                                bias=False, quant=quant)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() not in (4, 5):
            raise ValueError(f"ConvBN expects [T, B, C, H, W] or [B, C, H, W], got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            x = x.to(self.conv.weight.dtype)  # binary spikes from integer inference
        if x.dim() == 4:
            return self.bn(self.conv(x))
        y = self.bn(self.conv(x.flatten(0, 1)))  # [T*B, Cout, H', W']
        return y.unflatten(0, x.shape[:2])  # [T, B, Cout, H', W']


class SpikingConvBlock(nn.Module):
    """conv → BN → :class:`IntegerLIF`: ``forward(x, state) -> (spikes, state)``; the state is the neuron's tensor."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 neuron: NeuronConfig | None = None, quant: QuantConfig | None = None) -> None:
        super().__init__()
        self.conv_bn = ConvBN(in_channels, out_channels, kernel_size, stride, quant)
        self.lif = IntegerLIF(neuron, channels=out_channels)

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.lif(self.conv_bn(x), state)


class MSResidualBlock(nn.Module):
    """Membrane-shortcut residual block (MS-ResNet): ``y = x + BN(conv(LIF(BN(conv(LIF(x))))))``.

    Input and output are real-valued currents (what a membrane adds), so the shortcut joins membranes rather
    than spikes and every conv reads binary spikes. When the shape changes (stride or width), the shortcut is
    a 1×1 ConvBN over the block's first spikes, keeping that path spike-driven too.
    ``forward(x, state) -> (y, state)`` with state ``{"lif1": ..., "lif2": ...}``.
    """

    STATE_KEYS = ("lif1", "lif2")

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, neuron: NeuronConfig | None = None,
                 quant: QuantConfig | None = None) -> None:
        super().__init__()
        self.lif1 = IntegerLIF(neuron, channels=in_channels)
        self.conv1 = ConvBN(in_channels, out_channels, 3, stride, quant)
        self.lif2 = IntegerLIF(neuron, channels=out_channels)
        self.conv2 = ConvBN(out_channels, out_channels, 3, 1, quant)
        projects = stride != 1 or in_channels != out_channels
        self.shortcut = ConvBN(in_channels, out_channels, 1, stride, quant) if projects else None

    def forward(self, x: Tensor, state: State = None) -> tuple[Tensor, dict[str, Tensor]]:
        if state is None:
            state = dict.fromkeys(self.STATE_KEYS)
        if not isinstance(state, dict) or set(state) != set(self.STATE_KEYS):
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"MSResidualBlock state must be None or a dict with keys {self.STATE_KEYS}, got {keys}")
        if not x.is_floating_point():
            x = x.to(self.conv1.conv.weight.dtype)  # bool spikes of a preceding block in integer inference
        spikes1, m1 = self.lif1(x, state["lif1"])
        spikes2, m2 = self.lif2(self.conv1(spikes1), state["lif2"])
        shortcut = x if self.shortcut is None else self.shortcut(spikes1)
        return self.conv2(spikes2) + shortcut, {"lif1": m1, "lif2": m2}
