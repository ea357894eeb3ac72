"""Channel pruning with a membrane-potential prior: importance, global FLOPs-targeted ranking, masks, physical removal.

A *channel group* is a set of channels that must go together (the names of ``default_widths`` in the detector):
the output of one conv + BN + LIF, a residual current stream shared by a stage's blocks, shortcuts and readers, the
FPN width (the top-down sum ties every level), or a hidden width of the Detect head.

- **Importance** (:func:`channel_importance`): the membrane-potential prior, the mean of ``clamp(u, 0, 1)`` of the
  charged membrane ``u`` (θ units) over calibration windows, i.e. how near each channel comes to firing; a channel
  held inhibited scores 0. A stream is scored by the readers that integrate it (the highest prior wins); head groups,
  which have no membrane, by their mean absolute activation. Scores are divided by their group's mean, so groups of
  different sizes and scales rank on one scale.
- **Plan** (:func:`plan_pruning`): global greedy ranking until the estimated executed FLOPs (the cost model below,
  counted as the accounting and the runtimes count them) reach ``dense / target`` or an absolute FLOPs goal, never
  narrowing a group below its floor. The key trades importance against the FLOPs a channel costs (``cost_weight``
  0 = importance only).
- **Masks** (:class:`ChannelMasks`): hooks that zero a group's channels where its readers take them in (the input
  current of each reading LIF, the output of head layers), so a masked model computes exactly what the pruned one
  will; used while fine-tuning with a gradual schedule.
- **Removal** (:func:`remove_channels`): slices convs, BNs and LIFs (per-channel θ too) and rebuilds the detector from
  a config whose ``channels`` records the new widths, so the smaller model loads everywhere a checkpoint does.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from models.compress.accounting import FlopsCounter, LayerCount
from models.inference.stream import run_recordings
from models.networks.detector import SpikingYOLO, build_detector
from models.networks.gates import ChannelGate
from models.networks.graph import CONV_KINDS
from models.networks.head import head_channel_table
from models.networks.neuron import IntegerLIF, MembraneHook, membrane_hooks

_EPS = 1e-12


@dataclasses.dataclass
class ChannelGroup:
    """The layers whose channels one group name covers."""

    name: str
    width: int
    produce: list[nn.Module] = dataclasses.field(default_factory=list)  # sliced on output channels: convs, BNs, LIFs
    consume: list[nn.Module] = dataclasses.field(default_factory=list)  # sliced on input channels: convs, gates
    lifs: list[IntegerLIF] = dataclasses.field(default_factory=list)  # neurons integrating the group (masked, scored)
    gated: list[nn.Module] = dataclasses.field(default_factory=list)  # head layers whose output the mask zeroes

    @property
    def scored(self) -> list[nn.Module]:
        """What the importance is measured on: the integrating neurons, else (head) the gated layers."""
        return list(self.lifs) or list(self.gated)


def channel_groups(model: SpikingYOLO) -> dict[str, ChannelGroup]:
    """Every channel group of ``model``, keyed like :meth:`DetectorConfig.widths`, derived from its layer graph.

    A conv node produces its group (conv and BN sliced on output channels) and consumes the group of its input; a LIF
    belongs to its input's group (per-channel θ sliced, input masked, membrane scored); the Detect head's insides
    come from :func:`~models.networks.head.head_channel_table`.
    """
    graph = model.graph
    widths = model.config.widths()
    groups: dict[str, ChannelGroup] = {}

    def group(name: str) -> ChannelGroup:
        return groups.setdefault(name, ChannelGroup(name, widths[name]))

    for node in graph:
        if node.kind in CONV_KINDS:
            # a gated conv's gate predicts its output channels from its input channels: sliced on both
            gate = [node.module.gate] if node.kind == "gated_conv" else []
            group(node.group).produce += [node.module.conv, node.module.bn, *gate]
            source = graph.group(node.inputs[0])
            if source is not None:
                group(source).consume += [node.module.conv, *gate]
        elif node.kind == "lif":
            owner = group(graph.group(node.name))
            owner.produce.append(node.module)
            owner.lifs.append(node.module)
        elif node.kind == "detect":
            for level, source in enumerate(node.inputs):
                for entry in head_channel_table(node.module, level):
                    owner = group(entry.group or graph.group(source))
                    owner.produce += entry.produce
                    owner.consume += entry.consume
                    owner.gated.append(entry.gated)
    return groups


@dataclasses.dataclass
class Calibration:
    """Per-group channel importance (group mean = 1) and the per-layer counts measured on the same windows."""

    importance: dict[str, Tensor]
    layers: list[LayerCount]
    windows: int


def channel_importance(
    model: SpikingYOLO, recordings: Iterable[str | os.PathLike[str]], max_windows: int = 400, progress: bool = False
) -> Calibration:
    """Stream calibration recordings through ``model`` and score every channel (see the module docstring)."""
    model = model.eval()
    groups = channel_groups(model)
    sums: dict[int, Tensor] = {}
    counts: dict[int, int] = {}

    def accumulate(key: int, per_channel: Tensor, n: int) -> None:
        sums[key] = sums.get(key, 0) + per_channel.double()
        counts[key] = counts.get(key, 0) + n

    def prior_hook(lif: IntegerLIF) -> MembraneHook:
        def hook(u: Tensor, stored: Tensor) -> None:  # u: [B, C, H, W]
            accumulate(id(lif), u.clamp(0, 1).sum((0, 2, 3)), u.numel() // u.shape[1])

        return hook

    def activation_hook(module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        accumulate(id(module), out.abs().sum((0, 2, 3)), out.numel() // out.shape[1])  # out: [B, C, h, w]

    lifs = [lif for g in groups.values() for lif in g.lifs]
    gated = [m for g in groups.values() if not g.lifs for m in g.gated]
    handles = [m.register_forward_hook(activation_hook) for m in gated]
    try:
        with membrane_hooks((lif, prior_hook(lif)) for lif in lifs), FlopsCounter(model) as counter:
            windows = run_recordings(model, recordings, max_windows, progress)
    finally:
        for handle in handles:
            handle.remove()
    importance = {}
    for name, g in groups.items():
        scores = torch.stack([sums[id(m)] / max(counts[id(m)], 1) for m in g.scored]).amax(0)  # [C]
        importance[name] = (scores / (scores.mean() + _EPS)).float()
    return Calibration(importance, counter.layers(), windows)


@dataclasses.dataclass(frozen=True)
class _Term:
    """One layer's FLOPs: ``coef · in_width · out_width`` (a width is a group's or fixed)."""

    coef: float
    in_group: str | None
    in_fixed: int
    out_group: str | None
    out_fixed: int


class CostModel:
    """Executed FLOPs per window as a function of group widths, counted as :attr:`LayerCount.executed` counts them.

    Conv: ``positions · k² · C_in/g · C_out`` at every position (times the kept share of a gated conv's channels);
    membrane: ``neurons · steps`` times the share of non-zero states on the calibration windows. ``dense`` is the same
    sum at the scale's unpruned widths with nothing skipped.
    """

    def __init__(self, model: SpikingYOLO, layers: Sequence[LayerCount]) -> None:
        groups = channel_groups(model)
        out_of = {id(m): g.name for g in groups.values() for m in g.produce}
        in_of = {id(m): g.name for g in groups.values() for m in g.consume}
        measured = {c.name: c for c in layers}
        self.terms: list[_Term] = []
        self.dense_terms: list[_Term] = []
        for name, module in model.named_modules():
            count = measured.get(name)
            if count is None or not count.positions:
                continue
            if isinstance(module, nn.Conv2d):
                depthwise = module.groups > 1
                coef = count.positions * math.prod(module.kernel_size)
                term = _Term(coef, None if depthwise else in_of.get(id(module)),
                             1 if depthwise else module.in_channels, out_of.get(id(module)), module.out_channels)
            elif isinstance(module, IntegerLIF):
                term = _Term(count.positions, None, 1, out_of[id(module)], count.channels)
            else:
                continue
            self.dense_terms.append(term)
            # a CPU runtime computes every conv position but updates only the non-zero membrane states
            share = count.kept_fraction if isinstance(module, nn.Conv2d) else count.active_fraction
            self.terms.append(dataclasses.replace(term, coef=term.coef * share))
        self.widths = model.config.widths()
        self.dense = self._sum(self.dense_terms, dataclasses.replace(model.config, channels=()).widths())

    @staticmethod
    def _sum(terms: Iterable[_Term], widths: Mapping[str, int]) -> float:
        return sum(t.coef * (widths[t.in_group] if t.in_group else t.in_fixed)
                   * (widths[t.out_group] if t.out_group else t.out_fixed) for t in terms)

    def flops(self, widths: Mapping[str, int]) -> float:
        """Estimated executed FLOPs per window at ``widths``."""
        return self._sum(self.terms, widths)

    def saving(self, group: str, widths: Mapping[str, int]) -> float:
        """FLOPs saved by removing one channel of ``group`` at ``widths``."""
        total = 0.0
        for t in self.terms:
            if t.out_group == group:
                total += t.coef * (widths[t.in_group] if t.in_group else t.in_fixed)
            if t.in_group == group:
                total += t.coef * (widths[t.out_group] if t.out_group else t.out_fixed)
        return total


@dataclasses.dataclass
class PrunePlan:
    """Channels to remove, in removal order, and what is kept."""

    order: list[tuple[str, int]]  # (group, channel index), least useful first
    widths: dict[str, int]  # before
    flops_dense: float
    flops_before: float  # estimated executed FLOPs of the unpruned model
    flops_after: float  # estimated executed FLOPs once ``order`` is removed
    target_reduction: float

    @property
    def estimated_reduction(self) -> float:
        """Dense FLOPs over the estimated executed FLOPs after pruning."""
        return self.flops_dense / self.flops_after

    def removed(self, fraction: float = 1.0) -> list[tuple[str, int]]:
        """The first ``fraction`` of the removal order (a gradual schedule's masks)."""
        return self.order[: round(len(self.order) * min(max(fraction, 0.0), 1.0))]

    def keep(self, fraction: float = 1.0) -> dict[str, list[int]]:
        """Kept channel indices of every group after removing :meth:`removed` ``(fraction)``."""
        gone: dict[str, set[int]] = {}
        for name, channel in self.removed(fraction):
            gone.setdefault(name, set()).add(channel)
        return {name: [c for c in range(width) if c not in gone.get(name, ())] for name, width in self.widths.items()}

    def kept_widths(self) -> dict[str, int]:
        """Group widths after the whole plan."""
        return {name: len(kept) for name, kept in self.keep().items()}


def plan_pruning(
    model: SpikingYOLO,
    calibration: Calibration,
    target_reduction: float | None = None,
    floor: float = 0.25,
    min_channels: int = 2,
    cost_weight: float = 1.0,
    target_flops: float | None = None,
) -> PrunePlan:
    """Rank channels globally and remove them until executed FLOPs ≤ dense / ``target_reduction`` (or ≤
    ``target_flops`` per window, e.g. another model's executed count; exactly one of the two).

    Each step removes, among the groups still above their floor (``max(min_channels, ceil(floor · unpruned
    width))``), the least important remaining channel by ``importance / (saving / mean saving) ** cost_weight``,
    where ``saving`` is the FLOPs its removal saves now. Stops early (with a plan short of the target) when every
    group sits at its floor.
    """
    if (target_reduction is None) == (target_flops is None):
        raise ValueError("give exactly one of a target FLOPs reduction and a target FLOPs count")
    if target_reduction is not None and target_reduction < 1:
        raise ValueError(f"target FLOPs reduction must be >= 1, got {target_reduction}")
    if target_flops is not None and target_flops <= 0:
        raise ValueError(f"target FLOPs must be > 0, got {target_flops}")
    if not 0 < floor <= 1:
        raise ValueError(f"floor must be in (0, 1], got {floor}")
    cost = CostModel(model, calibration.layers)
    widths = dict(cost.widths)
    dense_widths = dataclasses.replace(model.config, channels=()).widths()
    floors = {n: min(widths[n], max(min_channels, math.ceil(floor * dense_widths[n]))) for n in widths}
    queues = {n: torch.argsort(calibration.importance[n], stable=True).tolist() for n in widths}
    flops_before = flops = cost.flops(widths)
    goal = target_flops if target_flops is not None else cost.dense / target_reduction
    order: list[tuple[str, int]] = []
    while flops > goal:
        savings = {n: cost.saving(n, widths) for n in widths if widths[n] > floors[n]}
        if not savings:
            break
        mean_saving = sum(savings.values()) / len(savings)
        name = min(savings, key=lambda n: float(calibration.importance[n][queues[n][0]])
                   / (max(savings[n], _EPS) / mean_saving) ** cost_weight)
        order.append((name, queues[name].pop(0)))
        widths[name] -= 1
        flops = cost.flops(widths)
    return PrunePlan(order, dict(cost.widths), cost.dense, flops_before, flops, cost.dense / goal)


class ChannelMasks:
    """Keep-masks on channel groups, applied by hooks (the weights are untouched): a context manager.

    A masked LIF gets zero current on the channel, so it never charges or fires and its readers see nothing; a masked
    head layer outputs zero on the channel. The weights reading a masked channel are zeroed too (:meth:`zero_weights`):
    a quantized conv's per-output-channel scale is the max over its input weights, which must not see channels that
    removal drops. The masked model therefore computes what :func:`remove_channels` builds. The hooks are closures
    over shared mask tensors, so deep copies of the model (EMA) follow every mask update; their weights are zeroed by
    calling :meth:`zero_weights` on them (a trainer does it after every step).
    """

    def __init__(self, model: SpikingYOLO) -> None:
        self.model = model
        self.groups = channel_groups(model)
        self.masks = {name: torch.ones(g.width) for name, g in self.groups.items()}
        self._handles: list[Any] = []
        for name, g in self.groups.items():
            mask = self.masks[name]
            self._handles += [lif.register_forward_pre_hook(_mask_input(mask)) for lif in g.lifs]
            self._handles += [m.register_forward_hook(_mask_output(mask)) for m in g.gated]

    def __enter__(self) -> ChannelMasks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_removed(self, removed: Iterable[tuple[str, int]]) -> None:
        """Mask exactly the ``(group, channel)`` pairs in ``removed``; every other channel passes."""
        for mask in self.masks.values():
            mask.fill_(1)
        for name, channel in removed:
            self.masks[name][channel] = 0
        self.zero_weights(self.model)

    @torch.no_grad()
    def zero_weights(self, model: SpikingYOLO) -> None:
        """Zero the input weights of every masked channel in ``model`` (this model or a copy of it, e.g. the EMA)."""
        for name, group in channel_groups(model).items():
            masked = (self.masks[name] == 0).nonzero()[:, 0]
            if len(masked):
                for conv in group.consume:
                    conv.weight.index_fill_(1, masked.to(conv.weight.device), 0)

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _mask_input(mask: Tensor) -> Callable[..., tuple[Any, ...]]:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]  # [T, B, C, H, W] or [B, C, H, W] current
        return (x * mask.to(x.device, x.dtype).view(-1, 1, 1), *args[1:])

    return hook


def _mask_output(mask: Tensor) -> Callable[..., Tensor]:
    def hook(module: nn.Module, args: tuple[Any, ...], out: Tensor) -> Tensor:
        return out * mask.to(out.device, out.dtype).view(-1, 1, 1)  # out: [B, C, h, w]

    return hook


def remove_channels(model: SpikingYOLO, keep: Mapping[str, Sequence[int]]) -> SpikingYOLO:
    """A new, smaller detector holding only the ``keep`` channels of each named group (others stay whole).

    Convs, BNs and LIFs (per-channel θ included) are sliced; the result is rebuilt from a config whose ``channels``
    records every narrowed width, and loads the sliced weights strictly. Outputs equal those of ``model`` with the
    other channels masked (:class:`ChannelMasks`).
    """
    narrowed = copy.deepcopy(model)
    groups = channel_groups(narrowed)
    widths = model.config.widths()
    for name, channels in keep.items():
        if name not in groups:
            raise ValueError(f"unknown channel group {name!r}; groups are {sorted(groups)}")
        index = torch.as_tensor(sorted(set(channels)), dtype=torch.long)
        if not len(index) or int(index[0]) < 0 or int(index[-1]) >= widths[name]:
            raise ValueError(f"group {name!r} ({widths[name]} channels) must keep 1..{widths[name]} valid channels")
        for module in groups[name].produce:
            _narrow_output(module, index)
        for conv in groups[name].consume:
            _narrow_input(conv, index)
        widths[name] = len(index)
    dense = dataclasses.replace(model.config, channels=()).widths()
    config = dataclasses.replace(model.config, channels={n: w for n, w in widths.items() if w != dense[n]})
    pruned = build_detector(config)
    pruned.load_state_dict(narrowed.state_dict(), strict=True)
    return pruned.train(model.training)


def slice_like_parameters(model: SpikingYOLO, keep: Mapping[str, Sequence[int]],
                          tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Per-parameter tensors of ``model`` keyed by parameter name (an optimizer's moments) sliced exactly as
    :func:`remove_channels` slices the parameters themselves, keyed by the pruned model's parameter names."""
    shadow = copy.deepcopy(model)  # a model whose parameters hold the tensors goes through the same slicing
    with torch.no_grad():
        for name, param in shadow.named_parameters():
            param.copy_(tensors[name] if name in tensors else torch.zeros_like(param))
    return {name: param.detach() for name, param in remove_channels(shadow, keep).named_parameters()
            if name in tensors}


def _sliced(tensor: Tensor, index: Tensor, dim: int) -> Tensor:
    out = tensor.detach().index_select(dim, index.to(tensor.device)).clone()
    return nn.Parameter(out, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else out


def _narrow_output(module: nn.Module, index: Tensor) -> None:
    if isinstance(module, nn.Conv2d):
        module.weight = _sliced(module.weight, index, 0)
        if module.bias is not None:
            module.bias = _sliced(module.bias, index, 0)
        if module.groups > 1:  # depthwise: one input channel per output channel
            module.in_channels = module.groups = len(index)
        module.out_channels = len(index)
    elif isinstance(module, nn.BatchNorm2d):
        for name in ("weight", "bias", "running_mean", "running_var"):
            setattr(module, name, _sliced(getattr(module, name), index, 0))
        module.num_features = len(index)
    elif isinstance(module, IntegerLIF):
        if module.log_threshold.dim() > 0:  # per-channel θ: [C, 1, 1]
            module.log_threshold = _sliced(module.log_threshold, index, 0)
        module.channels = len(index)
    elif isinstance(module, ChannelGate):  # weight [Cout, Cin], bias [Cout]
        module.weight = _sliced(module.weight, index, 0)
        module.bias = _sliced(module.bias, index, 0)
    else:
        raise TypeError(f"cannot narrow {type(module).__name__}")


def _narrow_input(module: nn.Module, index: Tensor) -> None:
    module.weight = _sliced(module.weight, index, 1)  # a conv's [Cout, Cin, k, k] or a gate's [Cout, Cin]
    if isinstance(module, nn.Conv2d):
        module.in_channels = len(index)
