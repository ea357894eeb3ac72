"""Spiking building blocks over ``[T, B, C, H, W]``: conv → BN → integer LIF, and the membrane-shortcut residual.

Every block takes its bit widths as configuration: a :class:`~models.networks.quant.QuantConfig` for the weights and a
:class:`~models.networks.neuron.NeuronConfig` for the membrane. The full-precision baseline is the same classes with
``QuantConfig(weight_bits=32)`` and ``NeuronConfig(quantize_membrane=False)``. Convolutions and BN run on all
time steps at once (time folded into the batch), so in training BN statistics pool over ``T·B``; in eval mode
a single-step call gives the same result as a multi-step call.
"""

from __future__ import annotations

from torch import Tensor, nn

from models.networks.graph import Graph, GraphError, ModuleOps, Node
from models.networks.neuron import IntegerLIF, NeuronConfig
from models.networks.quant import QuantConfig, QuantConv2d
from models.networks.state import State


class ConvBN(nn.Module):
    """Fake-quantized conv (no bias) + BatchNorm on every time step: ``[T, B, Cin, H, W] -> [T, B, Cout, H', W']``.

    Also accepts a single step ``[B, Cin, H, W]``, and integer inputs (event counts).
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
            x = x.to(self.conv.weight.dtype)  # uint8 event counts
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
    ``forward(x, state) -> (y, state)`` with state ``{"lif1": ..., "lif2": ...}``. The block's layer graph
    (:meth:`nodes`) is what both its forward and the detector's graph run.
    """

    STATE_KEYS = ("lif1", "lif2")

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, neuron: NeuronConfig | None = None,
                 quant: QuantConfig | None = None, mid_channels: int | None = None) -> None:
        super().__init__()
        mid_channels = out_channels if mid_channels is None else mid_channels  # narrower when pruned
        self.lif1 = IntegerLIF(neuron, channels=in_channels)
        self.conv1 = ConvBN(in_channels, mid_channels, 3, stride, quant)
        self.lif2 = IntegerLIF(neuron, channels=mid_channels)
        self.conv2 = ConvBN(mid_channels, out_channels, 3, 1, quant)
        projects = stride != 1 or in_channels != out_channels
        self.shortcut = ConvBN(in_channels, out_channels, 1, stride, quant) if projects else None
        self.graph = Graph([Node("x", "input"), *self.nodes("", "x")])

    def nodes(self, prefix: str, source: str, mid_group: str | None = None,
              out_group: str | None = None) -> list[Node]:
        """The block's nodes, named ``prefix + layer``, reading the current ``source``; the last one is its output.

        ``mid_group`` is the channel group of the inner width, ``out_group`` that of the output current (the
        shortcut's and conv2's; with an identity shortcut it must be the group of ``source``).
        """
        nodes = [
            Node(f"{prefix}lif1", "lif", (source,), module=self.lif1),
            Node(f"{prefix}conv1", "conv", (f"{prefix}lif1",), mid_group, module=self.conv1),
            Node(f"{prefix}lif2", "lif", (f"{prefix}conv1",), module=self.lif2),
            Node(f"{prefix}conv2", "conv", (f"{prefix}lif2",), out_group, module=self.conv2),
        ]
        shortcut = source
        if self.shortcut is not None:
            shortcut = f"{prefix}shortcut"
            nodes.append(Node(shortcut, "conv", (f"{prefix}lif1",), out_group, module=self.shortcut))
        return [*nodes, Node(f"{prefix}add", "add", (f"{prefix}conv2", shortcut))]

    def forward(self, x: Tensor, state: State = None) -> tuple[Tensor, dict[str, Tensor]]:
        try:
            return self.graph.run(ModuleOps(), x, state)
        except GraphError as exc:
            raise ValueError(f"MSResidualBlock state must be None or a dict with keys {self.STATE_KEYS}") from exc
