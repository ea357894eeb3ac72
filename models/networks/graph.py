"""The layer graph: one description of a network, an ordered list of nodes that every backend reads.

A :class:`Node` has a name (the module path of its layer, so checkpoint, export and state keys line up), an
operation *kind*, its input nodes, the channel group its output belongs to, and — in a trained model — the module
that holds its weights. The detector builds its graph once (:attr:`models.networks.detector.SpikingYOLO.graph`);
export writes it into the ``.spq`` header (:meth:`Graph.describe`), the integer runtime interprets it with its own
ops, pruning derives its channel groups from its edges, and the accounting walks it.

Kinds (shapes for a window of ``T`` bins and ``B`` streams):

========================  ===================================================================================
``input``                 the window's histogram ``[T, B, 2, H, W]``
``conv``                  conv + BN on every time step → current ``[T, B, C, h, w]`` (``module``: a ConvBN)
``gated_conv``            a ``conv`` whose output channels a predictor over its input switches off per window and
                          stream (a dropped channel's current is exactly 0); only on a current one LIF alone reads
                          (``module``: a ConvBN with a ``gate``, see :mod:`models.networks.gates`)
``lif``                   integer LIF, stateful → spikes ``[T, B, C, h, w]``; its state is keyed by the node name
``add``                   sum of same-shaped currents (a residual join)
``upsample_add``          a current plus the nearest-upsampled coarser current (FPN top-down)
``rate``                  time-averaged spikes ``[B, C, h, w]``
``detect``                the Detect head over the rate nodes → ``[B, 4 + nc, anchors]`` (eval)
========================  ===================================================================================

A *backend* is an object with one method per kind: ``backend.conv(node, x)``, ``backend.lif(node, x, state) ->
(spikes, state)``, ``backend.add(node, *xs)``, and so on. :meth:`Graph.run` is the single loop over the nodes;
adding a block type is one new kind here plus its method in each backend. :class:`ModuleOps` is the backend of the
trained (float or fake-quant) model: each node's own module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # torch only for hints and ModuleOps: the torch-free runtime reads graphs without it
    from torch import Tensor, nn

KINDS = ("input", "conv", "gated_conv", "lif", "add", "upsample_add", "rate", "detect")
STATEFUL = frozenset({"lif"})
_ARITY = {"input": (0, 0), "conv": (1, 1), "gated_conv": (1, 1), "lif": (1, 1), "add": (2, None),
          "upsample_add": (2, 2), "rate": (1, 1), "detect": (1, None)}
CONV_KINDS = ("conv", "gated_conv")  # nodes with a conv's geometry (conv_spec)
# Kinds whose output keeps the channel group of their (first) input: per-channel maps and joins.
_GROUP_FROM_INPUT = frozenset({"lif", "add", "upsample_add", "rate"})


class GraphError(ValueError):
    """A graph or graph description that is not well formed, or a state that does not fit a graph."""


@dataclasses.dataclass(frozen=True)
class Node:
    """One operation of a network.

    ``group`` is the channel group of the output where the node sets it (convs); per-channel kinds inherit their
    input's (see :meth:`Graph.group`). ``attrs`` is the static, JSON-able description an exported graph carries
    (conv geometry and bits, fixed-point settings); a trained model's nodes carry their ``module`` instead.
    """

    name: str
    kind: str
    inputs: tuple[str, ...] = ()
    group: str | None = None
    attrs: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)
    module: nn.Module | None = dataclasses.field(default=None, compare=False, repr=False)


class Backend(Protocol):
    """One method per node kind (``input`` excepted); see the module docstring."""

    def conv(self, node: Node, x: Any) -> Any: ...

    def gated_conv(self, node: Node, x: Any) -> Any: ...

    def lif(self, node: Node, x: Any, state: Any) -> tuple[Any, Any]: ...

    def add(self, node: Node, *xs: Any) -> Any: ...

    def upsample_add(self, node: Node, fine: Any, coarse: Any) -> Any: ...

    def rate(self, node: Node, spikes: Any) -> Any: ...

    def detect(self, node: Node, *rates: Any) -> Any: ...


class Graph:
    """An ordered, validated list of nodes: the first is the ``input``, the last the output.

    Raises :class:`GraphError` for unknown kinds, duplicate names, inputs that are not defined earlier, a wrong
    number of inputs, or a join (``add``, ``upsample_add``) of two different channel groups.
    """

    def __init__(self, nodes: Iterable[Node]) -> None:
        self.nodes: tuple[Node, ...] = tuple(nodes)
        self._by_name: dict[str, Node] = {}
        self._groups: dict[str, str | None] = {}
        for node in self.nodes:
            self._check(node)
            self._by_name[node.name] = node
            self._groups[node.name] = self._resolve_group(node)
        if not self.nodes or self.nodes[0].kind != "input" or sum(n.kind == "input" for n in self.nodes) != 1:
            raise GraphError("a graph starts with its one input node")
        self._readers: dict[str, list[Node]] = {n.name: [] for n in self.nodes}
        for node in self.nodes:
            for name in node.inputs:
                self._readers[name].append(node)
        # values are dropped after their last reader (a runtime then holds only the live currents)
        last = {name: i for i, node in enumerate(self.nodes) for name in node.inputs}
        self._drop_after = [[name for name in dict.fromkeys(node.inputs) if last[name] == i]
                            for i, node in enumerate(self.nodes)]

    def _check(self, node: Node) -> None:
        if node.kind not in KINDS:
            raise GraphError(f"node {node.name!r}: unknown kind {node.kind!r}; kinds are {KINDS}")
        if node.name in self._by_name:
            raise GraphError(f"duplicate node name {node.name!r}")
        low, high = _ARITY[node.kind]
        if len(node.inputs) < low or (high is not None and len(node.inputs) > high):
            raise GraphError(f"node {node.name!r}: a {node.kind} node takes {low}..{high or 'n'} inputs, got "
                             f"{len(node.inputs)}")
        missing = [name for name in node.inputs if name not in self._by_name]
        if missing:
            raise GraphError(f"node {node.name!r} reads {missing}, not defined before it")

    def _resolve_group(self, node: Node) -> str | None:
        if node.kind not in _GROUP_FROM_INPUT:
            return node.group
        groups = {self._groups[name] for name in node.inputs}
        if len(groups) > 1:
            raise GraphError(f"node {node.name!r} joins different channel groups {sorted(map(str, groups))}")
        (group,) = groups
        if node.group is not None and node.group != group:
            raise GraphError(f"node {node.name!r} declares group {node.group!r} but its input is in {group!r}")
        return group

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __getitem__(self, name: str) -> Node:
        return self._by_name[name]

    @property
    def output(self) -> Node:
        """The last node, whose value :meth:`run` returns."""
        return self.nodes[-1]

    def of_kind(self, *kinds: str) -> list[Node]:
        """The nodes of the given kinds, in graph order."""
        return [n for n in self.nodes if n.kind in kinds]

    def readers(self, name: str) -> list[Node]:
        """The nodes that read ``name``'s output, in graph order."""
        return list(self._readers[name])

    def group(self, name: str) -> str | None:
        """The channel group of ``name``'s output (declared, or inherited through per-channel kinds)."""
        return self._groups[name]

    @property
    def state_names(self) -> list[str]:
        """The stateful nodes, whose names key a network state, in graph order."""
        return [n.name for n in self.nodes if n.kind in STATEFUL]

    def run(self, backend: Backend, x: Any, state: Mapping[str, Any] | None = None,
            observe: Callable[[Node, Any], None] | None = None) -> tuple[Any, dict[str, Any]]:
        """Evaluate every node with ``backend``'s ops: ``(output, new state)``.

        ``state`` is None (every stateful node starts fresh: it gets None) or a dict keyed by exactly
        :attr:`state_names`; the new state has the same keys. ``observe(node, value)``, when given, sees every node's
        output as it is computed (e.g. a spike counter); it must not change it.
        """
        names = self.state_names
        if state is None:
            state = dict.fromkeys(names)
        elif not isinstance(state, Mapping) or set(state) != set(names):
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise GraphError(f"state must be None or a dict keyed by the stateful nodes {names}, got {got}")
        values: dict[str, Any] = {}
        new: dict[str, Any] = {}
        for node, drop in zip(self.nodes, self._drop_after, strict=True):
            args = [values[name] for name in node.inputs]
            if node.kind == "input":
                values[node.name] = x
            elif node.kind in STATEFUL:
                values[node.name], new[node.name] = getattr(backend, node.kind)(node, *args, state[node.name])
            else:
                values[node.name] = getattr(backend, node.kind)(node, *args)
            if observe is not None and node.kind != "input":
                observe(node, values[node.name])
            for name in drop:
                del values[name]
        return values[self.output.name], new

    def describe(self) -> list[dict[str, Any]]:
        """The JSON-able description (no modules): what an exported model stores; :meth:`from_description` reads it."""
        return [{"name": n.name, "kind": n.kind, "inputs": list(n.inputs), "group": n.group, "attrs": dict(n.attrs)}
                for n in self.nodes]

    @classmethod
    def from_description(cls, description: Sequence[Mapping[str, Any]]) -> Graph:
        """The graph of :meth:`describe`'s output (without modules); :class:`GraphError` if malformed."""
        if not isinstance(description, Sequence) or isinstance(description, str | bytes):
            raise GraphError(f"a graph description is a list of nodes, got {type(description).__name__}")
        nodes = []
        for i, entry in enumerate(description):
            try:
                nodes.append(Node(str(entry["name"]), str(entry["kind"]), tuple(map(str, entry["inputs"])),
                                  entry.get("group"), dict(entry.get("attrs", {}))))
            except (KeyError, TypeError, ValueError) as exc:
                raise GraphError(f"graph node {i} is malformed ({type(exc).__name__}: {exc})") from exc
        return cls(nodes)

    def with_attrs(self, attrs: Mapping[str, Mapping[str, Any]]) -> Graph:
        """The same graph without modules, each node's ``attrs`` extended by ``attrs[name]`` (export)."""
        return Graph(dataclasses.replace(n, attrs={**n.attrs, **attrs.get(n.name, {})}, module=None)
                     for n in self.nodes)

    def bind(self, modules: Mapping[str, nn.Module]) -> Graph:
        """The same graph with ``modules[name]`` as each listed node's module (a runtime binds its layers)."""
        return Graph(dataclasses.replace(n, module=modules.get(n.name, n.module)) for n in self.nodes)

    def shapes(self, height: int, width: int) -> dict[str, tuple[int, int, int]]:
        """``{node: (C, h, w)}`` of every node's output per time step and stream, for an input of
        ``height`` × ``width`` (static: from each conv's geometry; ``detect`` is left out)."""
        shapes: dict[str, tuple[int, int, int]] = {}
        for node in self.nodes:
            if node.kind == "input":
                shapes[node.name] = (2, height, width)
            elif node.kind in CONV_KINDS:
                spec = conv_spec(node)
                _, h, w = shapes[node.inputs[0]]
                size = [(n + 2 * p - k) // s + 1 for n, p, k, s in
                        zip((h, w), spec["padding"], spec["kernel"], spec["stride"], strict=True)]
                shapes[node.name] = (spec["out_channels"], *size)
            elif node.kind != "detect":
                shapes[node.name] = shapes[node.inputs[0]]
        return shapes

    def state_shapes(self, height: int, width: int) -> dict[str, tuple[int, int, int]]:
        """``{stateful node: (C, h, w)}``: one stream's state for an input of ``height`` × ``width``."""
        shapes = self.shapes(height, width)
        return {name: shapes[name] for name in self.state_names}


def conv_spec(node: Node) -> dict[str, Any]:
    """A conv node's geometry and bits: its ``attrs`` (an exported graph) or read off its ConvBN module."""
    if node.module is None or "out_channels" in node.attrs:
        return dict(node.attrs)
    conv = node.module.conv
    return {"in_channels": conv.in_channels, "out_channels": conv.out_channels, "kernel": list(conv.kernel_size),
            "stride": list(conv.stride), "padding": list(conv.padding), "bits": conv.quant.weight_bits}


class ModuleOps:
    """The backend of a trained (float or fake-quant) network: every node runs its own module; autograd flows."""

    def conv(self, node: Node, x: Tensor) -> Tensor:
        return node.module(x)

    def gated_conv(self, node: Node, x: Tensor) -> Tensor:
        conv_bn = node.module
        current = conv_bn(x)  # [T, B, C, h, w]
        keep, logits = conv_bn.gate(x)  # [B, C]: hard 0/1 forward, straight-through gradient
        conv_bn.gate.record(keep, logits, current)
        return current * keep.to(current.dtype)[None, :, :, None, None]

    def lif(self, node: Node, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        return node.module(x, state)

    def add(self, node: Node, *xs: Tensor) -> Tensor:
        total = xs[0]
        for x in xs[1:]:
            total = total + x
        return total

    def upsample_add(self, node: Node, fine: Tensor, coarse: Tensor) -> Tensor:
        from torch import nn  # lazy: see the imports

        # [T, B, C, h, w] + nearest-upsampled [T, B, C, h', w']
        up = nn.functional.interpolate(coarse.flatten(0, 1), size=fine.shape[-2:], mode="nearest")
        return fine + up.unflatten(0, fine.shape[:2])

    def rate(self, node: Node, spikes: Tensor) -> Tensor:
        return spikes.float().mean(0)  # [T, B, C, h, w] → [B, C, h, w]

    def detect(self, node: Node, *rates: Tensor) -> Any:
        out = node.module(list(rates))
        return out if node.module.training else out[0]  # training: the loss's dict; eval: [B, 4 + nc, anchors]
