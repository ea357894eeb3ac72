"""The spiking YOLO detector: spiking backbone (strides 8/16/32) → light spiking FPN → ultralytics Detect head.

The backbone and neck are stateful SNN layers run over the window's ``T`` time bins; their state (every LIF
membrane) is an explicit value passed in and out, so a caller streams a recording window after window with memory
(``forward(x, state) -> (out, state)``). The head is stateless and reads the time-averaged spikes (firing rates) of
each FPN level. Two variants of one architecture: ``spquant`` (4-bit weights, ternary membranes, learnable θ; first
layer 8-bit) and ``baseline`` (FP32 weights and membranes, fixed θ).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from models.networks.blocks import ConvBN, MSResidualBlock, SpikingConvBlock
from models.networks.frozen_config import FrozenConfig, check, sensor_size
from models.networks.gates import attach_gates
from models.networks.graph import Graph, GraphError, ModuleOps, Node
from models.networks.head import detect_head
from models.networks.neuron import IntegerLIF, NeuronConfig
from models.networks.quant import FULL_PRECISION_BITS, QuantConfig

ARCHITECTURE = Path(__file__).resolve().parent / "cfg" / "spiking_yolo.yaml"
VARIANTS = ("spquant", "baseline")
STRIDES = (8, 16, 32)


@dataclasses.dataclass(frozen=True)
class DetectorConfig(FrozenConfig):
    """Everything needed to rebuild a detector: stored in checkpoints and exported models.

    Input: windows of ``window_us`` cut into ``bins`` time bins (= SNN time steps) of 2 polarities, counts clipped
    at ``cutoff``, ``input_width`` × ``input_height`` padded to a multiple of 32. ``head_bits`` fake-quantizes the
    Detect head's weights (32 = floating point, the default); ``head_act_bits`` > 0 quantizes its hidden activations too
(an integer head; needs ``head_bits`` < 32). ``weight_quantizer`` is the scale rule of 3..8-bit weights (``maxabs``
or ``sawb``; ternary weights use TWN's rule either way). ``channels`` narrows channel groups (a pruned model:
    ``{group: width}``; empty = the scale's YAML widths, see :func:`default_widths`). ``sensor_width`` ×
    ``sensor_height`` is the camera the model was trained for (what callers assume when a recording or request names
    no sensor size; 0 = the input size, as in checkpoints written before the field existed). ``channel_gates`` gives
    every conv read by one LIF alone a per-window channel gate (:mod:`models.networks.gates`; off in checkpoints
    written before the field existed).
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
    head_bits: int = 32
    head_act_bits: int = 0
    weight_quantizer: str = "maxabs"
    channels: tuple[tuple[str, int], ...] = ()
    sensor_width: int = 0
    sensor_height: int = 0
    channel_gates: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        check(self.variant in VARIANTS, f"variant must be one of {VARIANTS}, got {self.variant!r}")
        scales = load_architecture()["scales"]
        check(self.scale in scales, f"scale must be one of {sorted(scales)}, got {self.scale!r}")
        for name in ("bins", "window_us", "cutoff", "input_width", "input_height", "reg_max"):
            check(isinstance(getattr(self, name), int) and getattr(self, name) > 0, f"{name} must be a positive int")
        check(len(self.class_names) > 0, "class_names must not be empty")
        for name in ("sensor_width", "sensor_height"):
            value = getattr(self, name)
            check(isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 16384,
                  f"{name} must be an int in 0..16384 (0 = the input size), got {value!r}")
        check((self.sensor_width == 0) == (self.sensor_height == 0),
              f"give both sensor_width and sensor_height, or neither; got {self.sensor_width}x{self.sensor_height}")
        check(isinstance(self.channel_gates, bool), f"channel_gates must be true or false, got {self.channel_gates!r}")
        check(self.head_bits == FULL_PRECISION_BITS or self.quantized,
              f"the baseline variant keeps a full-precision head, got head_bits={self.head_bits}")
        QuantConfig(weight_bits=self.head_bits, scale_rule=self.weight_quantizer)  # raises ValueError on bad values
        check(isinstance(self.head_act_bits, int) and (self.head_act_bits == 0 or 2 <= self.head_act_bits <= 8),
              f"head_act_bits must be 0 (float activations) or an int in 2..8, got {self.head_act_bits!r}")
        check(self.head_act_bits == 0 or self.head_bits != FULL_PRECISION_BITS,
              f"an integer head (head_act_bits={self.head_act_bits}) needs quantized head weights (head_bits < 32)")
        pairs = self.channels.items() if isinstance(self.channels, Mapping) else self.channels
        check(all(isinstance(p, tuple | list) and len(p) == 2 for p in pairs),
              "channels must map channel-group names to widths")
        channels = tuple(sorted((str(name), width) for name, width in pairs))
        object.__setattr__(self, "channels", channels)
        defaults = default_widths(self.scale, len(self.class_names), self.reg_max)
        for name, width in channels:
            check(name in defaults, f"unknown channel group {name!r}; groups are {sorted(defaults)}")
            check(isinstance(width, int) and not isinstance(width, bool) and 0 < width <= defaults[name],
                  f"channels[{name!r}] must be an int in 1..{defaults[name]}, got {width!r}")

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of every field; ``channels`` as a ``{group: width}`` dict; ``channel_gates`` only when set (so a
        model without gates writes the same checkpoint and ``.spq`` header as before the field existed)."""
        data = {**super().to_dict(), "channels": dict(self.channels)}
        if not self.channel_gates:
            del data["channel_gates"]
        return data

    def widths(self) -> dict[str, int]:
        """The width of every channel group: the scale's YAML widths, overridden by ``channels`` (pruned models)."""
        return {**default_widths(self.scale, len(self.class_names), self.reg_max), **dict(self.channels)}

    @property
    def pruned(self) -> bool:
        """True when some channel group is narrower than the scale's YAML width."""
        return bool(self.channels)

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
        return QuantConfig(weight_bits=self.first_layer_bits if first_layer else self.weight_bits,
                           scale_rule=self.weight_quantizer)

    def head_quant(self) -> QuantConfig:
        """The weight quantization of the Detect head's convs (``head_bits``; 32 = floating point, the default)."""
        return QuantConfig(weight_bits=self.head_bits, scale_rule=self.weight_quantizer)

    @property
    def sensor_size(self) -> tuple[int, int]:
        """(width, height) of the sensor the model expects: the recorded one, else the input size."""
        return sensor_size(self.sensor_width, self.sensor_height, self.input_width, self.input_height)

    @property
    def padded_size(self) -> tuple[int, int]:
        """(height, width) of the network input after padding to a multiple of 32."""
        return -(-self.input_height // 32) * 32, -(-self.input_width // 32) * 32


def load_architecture() -> dict[str, Any]:
    """The architecture YAML (widths and the scales table)."""
    return yaml.safe_load(ARCHITECTURE.read_text())


def _width(channels: int, multiple: float) -> int:
    return max(8, round(channels * multiple / 8) * 8)


def default_widths(scale: str, num_classes: int, reg_max: int) -> dict[str, int]:
    """Unpruned width of every channel group (what a pruned checkpoint's ``channels`` may narrow).

    Groups: ``stem1`` (first spiking conv), ``stem2`` (the current stream into stage 0), ``stage{i}`` (the residual
    current stream of stage i, shared by its blocks, shortcuts and readers), ``stage{i}.{j}`` (the inner width of
    block j), ``neck`` (every FPN level: the top-down sum ties them), and per head level k ``head{k}.box.{0,1}`` /
    ``head{k}.cls.{0,1}`` (the hidden widths of the Detect head's box and class branches).
    """
    arch = load_architecture()
    multiple, depth = arch["scales"][scale]
    widths = {"stem1": _width(arch["stem"][0], multiple), "stem2": _width(arch["stem"][1], multiple)}
    for i, channels in enumerate(arch["stages"]):
        widths[f"stage{i}"] = _width(channels, multiple)
        widths.update({f"stage{i}.{j}": _width(channels, multiple) for j in range(int(depth))})
    neck = widths["neck"] = _width(arch["neck"], multiple)
    # ultralytics Detect's own rule for its hidden widths (box branch c2, class branch c3)
    box, cls = max(16, neck // 4, 4 * reg_max), max(neck, min(num_classes, 100))
    for k in range(len(STRIDES)):
        widths.update({f"head{k}.box.0": box, f"head{k}.box.1": box, f"head{k}.cls.0": cls, f"head{k}.cls.1": cls})
    return widths


class SpikingBackbone(nn.Module):
    """Strided spiking conv, strided conv, then three strided MS-residual stages (P3/P4/P5 currents)."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        arch = load_architecture()
        depth = int(arch["scales"][config.scale][1])
        neuron, widths = config.neuron(), config.widths()
        self.stem1 = SpikingConvBlock(2, widths["stem1"], 3, 2, neuron, config.quant(first_layer=True))
        # The second stem conv hands currents, not spikes, to the MS residual stages (each starts with a LIF).
        self.stem2 = ConvBN(widths["stem1"], widths["stem2"], 3, 2, config.quant())
        self.stages = nn.ModuleList()
        in_ch = widths["stem2"]
        for i in range(len(arch["stages"])):
            out_ch = widths[f"stage{i}"]
            blocks = [
                MSResidualBlock(in_ch if j == 0 else out_ch, out_ch, 2 if j == 0 else 1, neuron, config.quant(),
                                mid_channels=widths[f"stage{i}.{j}"])
                for j in range(depth)
            ]
            self.stages.append(nn.ModuleList(blocks))
            in_ch = out_ch
        self.out_channels = tuple(widths[f"stage{i}"] for i in range(len(arch["stages"])))

    def nodes(self, prefix: str, source: str) -> tuple[list[Node], list[str]]:
        """The backbone's nodes reading the histogram ``source``, and the names of its P3/P4/P5 outputs.

        Channel groups: ``stem1``, ``stem2`` (the current stream into stage 0), ``stage{i}`` (the stream a stage's
        projecting block starts; its identity blocks add to it) and ``stage{i}.{j}`` (block j's inner width).
        """
        stem1, stem2 = f"{prefix}stem1", f"{prefix}stem2"
        nodes = [Node(f"{stem1}.conv_bn", "conv", (source,), "stem1", module=self.stem1.conv_bn),
                 Node(f"{stem1}.lif", "lif", (f"{stem1}.conv_bn",), module=self.stem1.lif),
                 Node(stem2, "conv", (f"{stem1}.lif",), "stem2", module=self.stem2)]
        current, group, outputs = stem2, "stem2", []
        for i, stage in enumerate(self.stages):
            for j, block in enumerate(stage):
                if block.shortcut is not None:
                    group = f"stage{i}"
                nodes += block.nodes(f"{prefix}stages.{i}.{j}.", current, f"stage{i}.{j}", group)
                current = nodes[-1].name
            outputs.append(current)
        return nodes, outputs


class SpikingFPN(nn.Module):
    """Light spiking FPN: LIF → 1×1 ConvBN per level, top-down nearest-upsampled sum, LIF per output level."""

    def __init__(self, in_channels: tuple[int, ...], width: int, config: DetectorConfig) -> None:
        super().__init__()
        neuron = config.neuron()
        self.inputs = nn.ModuleList(IntegerLIF(neuron, channels=c) for c in in_channels)
        self.lateral = nn.ModuleList(ConvBN(c, width, 1, 1, config.quant()) for c in in_channels)
        self.outputs = nn.ModuleList(IntegerLIF(neuron, channels=width) for _ in in_channels)

    def nodes(self, prefix: str, features: list[str]) -> tuple[list[Node], list[str]]:
        """The FPN's nodes reading the backbone currents ``features`` (fine to coarse), and its spike outputs.

        Every level is in the channel group ``neck``: the top-down sums tie them.
        """
        nodes, lateral = [], []
        for i, (lif, conv, feature) in enumerate(zip(self.inputs, self.lateral, features, strict=True)):
            nodes += [Node(f"{prefix}inputs.{i}", "lif", (feature,), module=lif),
                      Node(f"{prefix}lateral.{i}", "conv", (f"{prefix}inputs.{i}",), "neck", module=conv)]
            lateral.append(f"{prefix}lateral.{i}")
        merged = [lateral[-1]]
        for i in reversed(range(len(lateral) - 1)):
            nodes.append(Node(f"{prefix}merge.{i}", "upsample_add", (lateral[i], merged[0])))
            merged.insert(0, f"{prefix}merge.{i}")
        for i, (lif, current) in enumerate(zip(self.outputs, merged, strict=True)):
            nodes.append(Node(f"{prefix}outputs.{i}", "lif", (current,), module=lif))
        return nodes, [f"{prefix}outputs.{i}" for i in range(len(merged))]


class SpikingYOLO(nn.Module):
    """Stateful spiking detector: ``forward(x, state) -> (head_output, state)``.

    ``x`` is ``[T, B, 2, H, W]`` (counts; uint8 is accepted); ``state`` is None (fresh) or the dict returned by the
    previous call, ``{LIF node name: membrane [B, C, h, w]}``. In training the head output is ultralytics' dict
    (``boxes``, ``scores``, ``feats``) for the loss; in eval mode it is ``(B, 4 + nc, anchors)``: xywh in input
    pixels and class scores. The network is one layer graph (:attr:`graph`), run node by node.
    """

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = SpikingBackbone(config)
        neck_width = config.widths()["neck"]
        self.neck = SpikingFPN(self.backbone.out_channels, neck_width, config)
        self.head = detect_head(neck_width, len(STRIDES), config.class_names, config.reg_max, config.widths(),
                                config.head_quant(), config.head_act_bits)
        self.head.stride = torch.tensor(STRIDES, dtype=torch.float32)
        self.head.bias_init()
        backbone, features = self.backbone.nodes("backbone.", "x")
        neck, levels = self.neck.nodes("neck.", features)
        rates = [Node(f"neck.rate.{i}", "rate", (level,)) for i, level in enumerate(levels)]
        graph = Graph([Node("x", "input"), *backbone, *neck, *rates,
                       Node("head", "detect", tuple(r.name for r in rates), attrs={"strides": list(STRIDES)},
                            module=self.head)])
        self.graph = attach_gates(graph) if config.channel_gates else graph

    def forward(self, x: Tensor, state: dict[str, Any] | None = None,
                observe: Callable[[Node, Any], None] | None = None) -> tuple[Any, dict[str, Any]]:
        if x.dim() != 5 or x.shape[2] != 2:
            raise ValueError(f"expected input [T, B, 2, H, W], got {tuple(x.shape)}")
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(f"input height and width must be multiples of 32, got {tuple(x.shape[-2:])}")
        if not x.is_floating_point():  # event counts, in the dtype of the first layer
            x = x.to(self.backbone.stem1.conv_bn.conv.weight.dtype)
        try:
            return self.graph.run(ModuleOps(), x, state, observe)
        except GraphError as exc:
            raise ValueError(str(exc)) from exc


def build_detector(config: DetectorConfig | dict[str, Any]) -> SpikingYOLO:
    """A fresh detector for ``config`` (a :class:`DetectorConfig` or its dict form)."""
    if not isinstance(config, DetectorConfig):
        config = DetectorConfig.from_dict(config)
    return SpikingYOLO(config)


QUANTIZATION_FIELDS = ("weight_bits", "head_bits", "head_act_bits", "weight_quantizer")


def requantized(model: SpikingYOLO, **changes: Any) -> SpikingYOLO:
    """``model``'s weights under other quantization settings (:data:`QUANTIZATION_FIELDS`): the start of a
    quantization-aware fine-tune. Unchanged when nothing changes; new activation quantizers calibrate on their first
    input."""
    unknown = sorted(set(changes) - set(QUANTIZATION_FIELDS))
    check(not unknown,
          f"requantized changes quantization fields only ({', '.join(QUANTIZATION_FIELDS)}), got {unknown}")
    config = dataclasses.replace(model.config, **changes)
    if config == model.config:
        return model
    converted = build_detector(config)
    missing, unexpected = converted.load_state_dict(model.state_dict(), strict=False)
    check(not unexpected and all(key.endswith(".act.scale") for key in missing),
          f"cannot requantize: unexpected keys {unexpected[:3]}, missing keys {missing[:3]}")
    return converted.train(model.training)


def with_channel_gates(model: SpikingYOLO) -> SpikingYOLO:
    """``model`` with a fresh channel gate on every gateable conv (each keeps every channel until trained): the start
    of a gate fine-tune from a trained checkpoint. Unchanged when it has gates already."""
    if model.config.channel_gates:
        return model
    gated = build_detector(dataclasses.replace(model.config, channel_gates=True))
    missing, unexpected = gated.load_state_dict(model.state_dict(), strict=False)
    check(not unexpected and all(".gate." in key for key in missing),
          f"cannot add channel gates: unexpected keys {unexpected[:3]}, missing keys {missing[:3]}")
    return gated.train(model.training)
