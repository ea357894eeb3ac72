"""The spiking YOLO detector: spiking backbone (strides 8/16/32) → light spiking FPN → ultralytics Detect head.

The backbone and neck are stateful SNN layers run over the window's ``T`` time bins; their state (every LIF
membrane) is an explicit value passed in and out, so a caller streams a recording window after window with memory
(``forward(x, state) -> (out, state)``). The head is stateless and reads the time-averaged spikes (firing rates) of
each FPN level. Two variants of one architecture: ``spquant`` (4-bit weights, ternary membranes, learnable θ; first
layer 8-bit) and ``baseline`` (FP32 weights and membranes, fixed θ).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from models.blocks import ConvBN, MSResidualBlock, SpikingConvBlock
from models.frozen_config import FrozenConfig, check
from models.neuron import IntegerLIF, NeuronConfig
from models.quant import QuantConfig
from models.ultralytics_parts import Detect

ARCHITECTURE = Path(__file__).resolve().parent / "cfg" / "spiking_yolo.yaml"
VARIANTS = ("spquant", "baseline")
STRIDES = (8, 16, 32)


@dataclasses.dataclass(frozen=True)
class DetectorConfig(FrozenConfig):
    """Everything needed to rebuild a detector: stored in checkpoints and exported models.

    Input: windows of ``window_us`` cut into ``bins`` time bins (= SNN time steps) of 2 polarities, counts clipped
    at ``cutoff``, ``input_width`` × ``input_height`` padded to a multiple of 32.
    """

    variant: str = "spquant"
    scale: str = "n"
    bins: int = 5
    window_us: int = 50_000
    cutoff: int = 10
    input_width: int = 304
    input_height: int = 240
    class_names: tuple[str, ...] = ("car", "pedestrian")
    weight_bits: int = 4
    first_layer_bits: int = 8
    membrane_lb: float = -1.0
    leak: float = 0.5
    reg_max: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        check(self.variant in VARIANTS, f"variant must be one of {VARIANTS}, got {self.variant!r}")
        scales = load_architecture()["scales"]
        check(self.scale in scales, f"scale must be one of {sorted(scales)}, got {self.scale!r}")
        for name in ("bins", "window_us", "cutoff", "input_width", "input_height", "reg_max"):
            check(isinstance(getattr(self, name), int) and getattr(self, name) > 0, f"{name} must be a positive int")
        check(len(self.class_names) > 0, "class_names must not be empty")

    @property
    def quantized(self) -> bool:
        """True for the spquant variant."""
        return self.variant == "spquant"

    def neuron(self) -> NeuronConfig:
        """The LIF configuration of every spiking layer."""
        if self.quantized:
            return NeuronConfig(leak=self.leak, lb=self.membrane_lb, ub=1.0, step=1.0, learn_threshold=True)
        return NeuronConfig(leak=self.leak, quantize_membrane=False, learn_threshold=False)

    def quant(self, first_layer: bool = False) -> QuantConfig:
        """The weight quantization of a spiking layer (FP32 in the baseline)."""
        if not self.quantized:
            return QuantConfig(weight_bits=32)
        return QuantConfig(weight_bits=self.first_layer_bits if first_layer else self.weight_bits)

    @property
    def padded_size(self) -> tuple[int, int]:
        """(height, width) of the network input after padding to a multiple of 32."""
        return -(-self.input_height // 32) * 32, -(-self.input_width // 32) * 32


def load_architecture() -> dict[str, Any]:
    """The architecture YAML (widths and the scales table)."""
    return yaml.safe_load(ARCHITECTURE.read_text())


def _width(channels: int, multiple: float) -> int:
    return max(8, round(channels * multiple / 8) * 8)


class SpikingBackbone(nn.Module):
    """Strided spiking conv, strided conv, then three strided MS-residual stages; returns the P3/P4/P5 currents."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        arch = load_architecture()
        multiple, depth = arch["scales"][config.scale]
        neuron = config.neuron()
        stem = [_width(c, multiple) for c in arch["stem"]]
        self.stem1 = SpikingConvBlock(2, stem[0], 3, 2, neuron, config.quant(first_layer=True))
        # The second stem conv hands currents, not spikes, to the MS residual stages (each starts with a LIF).
        self.stem2 = ConvBN(stem[0], stem[1], 3, 2, config.quant())
        self.stages = nn.ModuleList()
        in_ch = stem[1]
        for channels in arch["stages"]:
            out_ch = _width(channels, multiple)
            blocks = [MSResidualBlock(in_ch, out_ch, 2, neuron, config.quant())]
            blocks += [MSResidualBlock(out_ch, out_ch, 1, neuron, config.quant()) for _ in range(int(depth) - 1)]
            self.stages.append(nn.ModuleList(blocks))
            in_ch = out_ch
        self.out_channels = tuple(_width(c, multiple) for c in arch["stages"])

    def forward(self, x: Tensor, state: dict[str, Any]) -> tuple[list[Tensor], dict[str, Any]]:
        new: dict[str, Any] = {}
        s, new["stem1"] = self.stem1(x, state.get("stem1"))  # [T, B, C1, H/2, W/2] spikes
        y = self.stem2(s)  # [T, B, C2, H/4, W/4] currents
        outputs = []
        for i, stage in enumerate(self.stages):
            for j, block in enumerate(stage):
                key = f"stage{i}.{j}"
                y, new[key] = block(y, state.get(key))  # currents [T, B, C, H/2^(i+3), W/2^(i+3)]
            outputs.append(y)
        return outputs, new


class SpikingFPN(nn.Module):
    """Light spiking FPN: LIF → 1×1 ConvBN per level, top-down nearest-upsampled sum, LIF per output level."""

    def __init__(self, in_channels: tuple[int, ...], width: int, config: DetectorConfig) -> None:
        super().__init__()
        neuron = config.neuron()
        self.inputs = nn.ModuleList(IntegerLIF(neuron, channels=c) for c in in_channels)
        self.lateral = nn.ModuleList(ConvBN(c, width, 1, 1, config.quant()) for c in in_channels)
        self.outputs = nn.ModuleList(IntegerLIF(neuron, channels=width) for _ in in_channels)

    def forward(self, features: list[Tensor], state: dict[str, Any]) -> tuple[list[Tensor], dict[str, Any]]:
        new: dict[str, Any] = {}
        lateral = []
        for i, (lif, conv) in enumerate(zip(self.inputs, self.lateral, strict=True)):
            spikes, new[f"in{i}"] = lif(features[i], state.get(f"in{i}"))
            lateral.append(conv(spikes))  # [T, B, width, h_i, w_i]
        merged = [lateral[-1]]
        for current in reversed(lateral[:-1]):
            up = merged[0].flatten(0, 1)
            up = nn.functional.interpolate(up, size=current.shape[-2:], mode="nearest").unflatten(0, current.shape[:2])
            merged.insert(0, current + up)
        outputs = []
        for i, (lif, current) in enumerate(zip(self.outputs, merged, strict=True)):
            spikes, new[f"out{i}"] = lif(current, state.get(f"out{i}"))
            outputs.append(spikes)  # [T, B, width, h_i, w_i] spikes
        return outputs, new


class SpikingYOLO(nn.Module):
    """Stateful spiking detector: ``forward(x, state) -> (head_output, state)``.

    ``x`` is ``[T, B, 2, H, W]`` (counts; uint8 is accepted); ``state`` is None (fresh) or the dict returned by the
    previous call. In training the head output is ultralytics' dict (``boxes``, ``scores``, ``feats``) for the loss;
    in eval mode it is ``(B, 4 + nc, anchors)``: xywh in input pixels and class scores.
    """

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = SpikingBackbone(config)
        arch = load_architecture()
        neck_width = _width(arch["neck"], arch["scales"][config.scale][0])
        self.neck = SpikingFPN(self.backbone.out_channels, neck_width, config)
        self.head = Detect(nc=len(config.class_names), reg_max=config.reg_max, ch=(neck_width,) * len(STRIDES))
        self.head.stride = torch.tensor(STRIDES, dtype=torch.float32)
        self.head.bias_init()

    def forward_features(self, x: Tensor, state: dict[str, Any] | None = None) -> tuple[list[Tensor], dict[str, Any]]:
        """Backbone and neck over the window: per-level firing rates ``[B, C, h, w]`` and the new state."""
        if x.dim() != 5 or x.shape[2] != 2:
            raise ValueError(f"expected input [T, B, 2, H, W], got {tuple(x.shape)}")
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(f"input height and width must be multiples of 32, got {tuple(x.shape[-2:])}")
        state = state or {}
        x = x.to(self.head.stride.dtype) if not x.is_floating_point() else x
        features, backbone_state = self.backbone(x, state.get("backbone", {}))
        levels, neck_state = self.neck(features, state.get("neck", {}))
        rates = [spikes.float().mean(0) for spikes in levels]  # time-averaged spikes: [B, C, h, w]
        return rates, {"backbone": backbone_state, "neck": neck_state}

    def forward(self, x: Tensor, state: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        rates, state = self.forward_features(x, state)
        out = self.head(rates)
        return (out if self.training else out[0]), state


def build_detector(config: DetectorConfig | dict[str, Any]) -> SpikingYOLO:
    """A fresh detector for ``config`` (a :class:`DetectorConfig` or its dict form)."""
    if not isinstance(config, DetectorConfig):
        config = DetectorConfig.from_dict(config)
    return SpikingYOLO(config)
