"""The spiking part of a detector as a NIR graph (Neuromorphic Intermediate Representation, pip ``nir``).

Written by walking the layer graph (:attr:`SpikingYOLO.graph`), one NIR node per operation, for one time step (one
bin of the stacked histogram, ``[2, H, W]`` event counts, in; every LIF's state carried to the next step):

- ``conv`` → ``nir.Conv2d`` with the batch norm folded into weight and bias (``W·γ/√(σ²+ε)``, ``β − μ·γ/√(σ²+ε)``);
  a quantized conv exports its fake-quantized (dequantized) weights.
- ``lif`` → ``nir.LIF`` (``nir.IF`` for a leak of 1). Ours is ``v = λ·v + I``, spike ``v > θ``, hard reset to 0
  (``neuron.py`` runs it in θ units, ``u = v/θ``). NIR's ``τ·dv/dt = (v_leak − v) + R·I``, stepped by forward Euler
  with step ``dt``, gives ``v ← (1 − dt/τ)·v + (dt/τ)·R·I``: so ``τ = dt/(1 − λ)``, ``R = τ/dt``, ``v_leak = 0``,
  ``v_threshold = θ``, ``v_reset = 0``. NIR has no time step; ``dt`` (default 1e-4 s, what snnTorch's importer
  assumes) is in the metadata, and a consumer stepping at another ``dt`` must scale τ with it.
- ``add`` (the residual joins) → no node: NIR sums every edge that enters a node, so both currents feed each reader.
- ``upsample_add`` (the FPN's top-down sum) → NIR has no upsampling or reshape primitive, so nearest upsampling is a
  ``nir.Linear`` on flattened maps (a 0/1 matrix, block-diagonal over channels; gzip keeps the file small, but a
  reader holds it dense: ``C·H·W × C·h·w`` floats), the finer current is flattened by ``nir.Flatten``, and the LIF
  that reads the sum runs on the flat vector. Graph outputs on flat vectors carry their ``[C, H, W]`` in metadata.
- ``rate`` and ``detect``: left out. The Detect head (ultralytics, DFL) reads time averages of the outputs, which is
  not a per-step NIR operation; the graph's outputs are the FPN's spikes, one per level.

What NIR cannot carry goes into metadata (JSON under ``"spquant"``): weight bits, the membrane level grid (the
spquant variant stores its membrane rounded to the ternary grid after every step — a NIR consumer integrates it in
float, so only the FP32 baseline runs identically), window length, bins and the original node names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.networks.detector import SpikingYOLO
from models.networks.graph import Node

FORMAT = "spquant-nir-1"
DEFAULT_DT = 1e-4


class NirExportError(ValueError):
    """The model has something NIR cannot express, or the ``nir`` package is missing."""


def _nir() -> Any:
    try:
        import nir
    except ImportError:
        raise NirExportError("NIR export needs the 'nir' package: pip install 'spquant[nir]'") from None
    return nir


def folded_conv(node: Node) -> tuple[np.ndarray, np.ndarray]:
    """``(weight, bias)`` of a conv node's ConvBN with the (eval-mode) batch norm folded in, float32."""
    conv, bn = node.module.conv, node.module.bn
    with torch.no_grad():
        weight = conv.quantized_weight().double() if hasattr(conv, "quantized_weight") else conv.weight.double()
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        bias = bn.bias.double() - bn.running_mean.double() * scale
        if conv.bias is not None:
            bias = bias + conv.bias.double() * scale
        weight = weight * scale[:, None, None, None]
    return weight.float().numpy(), bias.float().numpy()


def upsample_matrix(channels: int, coarse: tuple[int, int], fine: tuple[int, int]) -> np.ndarray:
    """The 0/1 matrix of nearest upsampling ``[C, h, w] → [C, H, W]`` on flattened maps (torch's "nearest" rule:
    source index ``⌊i·h/H⌋``), ``[C·H·W, C·h·w]`` float32."""
    (h, w), (big_h, big_w) = coarse, fine
    rows = np.minimum(np.floor(np.arange(big_h) * (h / big_h)).astype(np.int64), h - 1)
    cols = np.minimum(np.floor(np.arange(big_w) * (w / big_w)).astype(np.int64), w - 1)
    source = (rows[:, None] * w + cols[None, :]).ravel()  # [H·W] → index into h·w
    matrix = np.zeros((channels * big_h * big_w, channels * h * w), dtype=np.float32)
    for c in range(channels):
        matrix[c * big_h * big_w + np.arange(big_h * big_w), c * h * w + source] = 1.0
    return matrix


def to_nir(model: SpikingYOLO, dt: float = DEFAULT_DT) -> Any:
    """The NIR graph (``nir.NIRGraph``) of ``model``'s spiking part, for one time step (see the module docstring)."""
    nir = _nir()
    if not dt > 0:
        raise NirExportError(f"dt must be positive, got {dt}")
    cfg, graph = model.config, model.graph
    height, width = cfg.padded_size
    shapes = graph.shapes(height, width)
    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str]] = []
    # A graph node's value, as the NIR nodes whose outputs sum to it, and whether those are flat vectors.
    value: dict[str, tuple[list[str], bool]] = {}
    flat_shapes: dict[str, list[int]] = {}

    def connect(sources: list[str], target: str) -> None:
        edges.extend((source, target) for source in sources)

    def flattened(name: str, sources: list[str], flat: bool, shape: tuple[int, int, int]) -> list[str]:
        if flat:
            return sources
        nodes[name] = nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1)
        connect(sources, name)
        return [name]

    for node in graph:
        if node.kind == "input":
            nodes["input"] = nir.Input(input_type={"input": np.array([2, height, width])})
            value[node.name] = (["input"], False)
        elif node.kind == "conv":
            sources, flat = value[node.inputs[0]]
            if flat:
                raise NirExportError(f"{node.name}: a conv after an FPN sum cannot be exported (flat input)")
            weight, bias = folded_conv(node)
            conv = node.module.conv
            _, in_h, in_w = shapes[node.inputs[0]]
            nodes[node.name] = nir.Conv2d(
                input_shape=(in_h, in_w), weight=weight, stride=tuple(conv.stride), padding=tuple(conv.padding),
                dilation=tuple(conv.dilation), groups=conv.groups, bias=bias,
                metadata={"weight_bits": int(conv.quant.weight_bits), "bn_folded": 1})
            connect(sources, node.name)
            value[node.name] = ([node.name], False)
        elif node.kind == "lif":
            sources, flat = value[node.inputs[0]]
            shape = shapes[node.name]
            nodes[node.name] = _lif(nir, node, (int(np.prod(shape)),) if flat else shape, dt)
            if flat:
                flat_shapes[node.name] = list(shape)
            connect(sources, node.name)
            value[node.name] = ([node.name], flat)
        elif node.kind == "add":
            parts = [value[name] for name in node.inputs]
            if len({flat for _, flat in parts}) > 1:
                raise NirExportError(f"{node.name}: a sum of flat and spatial currents")
            value[node.name] = ([s for sources, _ in parts for s in sources], parts[0][1])
        elif node.kind == "upsample_add":
            (fine_src, fine_flat), (coarse_src, coarse_flat) = value[node.inputs[0]], value[node.inputs[1]]
            fine_shape, coarse_shape = shapes[node.inputs[0]], shapes[node.inputs[1]]
            fine = flattened(f"{node.name}.fine", fine_src, fine_flat, fine_shape)
            coarse = flattened(f"{node.name}.coarse", coarse_src, coarse_flat, coarse_shape)
            up = f"{node.name}.upsample"
            nodes[up] = nir.Linear(weight=upsample_matrix(coarse_shape[0], coarse_shape[1:], fine_shape[1:]),
                                   metadata={"op": "nearest upsampling", "from": list(coarse_shape),
                                             "to": list(fine_shape)})
            connect(coarse, up)
            value[node.name] = ([*fine, up], True)
        elif node.kind in ("rate", "detect"):
            continue  # the head's side: not exported (see the module docstring)
        else:
            raise NirExportError(f"{node.name}: node kind {node.kind!r} has no NIR export")
    outputs = [graph[rate.inputs[0]].name for rate in graph.of_kind("rate")]
    for name in outputs:
        out = f"output.{name}"
        nodes[out] = nir.Output(output_type={"output": np.array(nodes[name].output_type["output"])})
        edges.append((name, out))
    meta = _metadata(model, dt, outputs, flat_shapes)
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"spquant": json.dumps(meta), "format": FORMAT})


def _lif(nir: Any, node: Node, shape: tuple[int, ...], dt: float) -> Any:
    lif = node.module
    cfg = lif.config
    if cfg.reset != "hard":
        raise NirExportError(f"{node.name}: NIR neurons reset to v_reset; a soft reset (subtract θ) has no NIR form")
    theta = lif.threshold.detach().float().numpy()  # [] or [C, 1, 1]
    if len(shape) == 1 and theta.ndim:  # a flat vector, channel-major: each channel's θ over its positions
        threshold = np.repeat(theta.ravel(), shape[0] // theta.size)
    else:
        threshold = np.broadcast_to(theta, shape)
    threshold = np.ascontiguousarray(threshold, dtype=np.float32)
    zeros = np.zeros(shape, dtype=np.float32)
    meta = {"leak": float(cfg.leak), "reset": "hard",
            "membrane_levels": [cfg.lb, cfg.ub, cfg.step] if cfg.quantize_membrane else "float"}
    if cfg.leak == 1:
        return nir.IF(r=np.ones(shape, dtype=np.float32), v_threshold=threshold, v_reset=zeros, metadata=meta)
    tau = dt / (1.0 - float(cfg.leak))
    return nir.LIF(tau=np.full(shape, tau), r=np.full(shape, tau / dt), v_leak=zeros.astype(np.float64),
                   v_threshold=threshold, v_reset=zeros, metadata=meta)


def _metadata(model: SpikingYOLO, dt: float, outputs: list[str], flat_shapes: dict[str, list[int]]) -> dict[str, Any]:
    cfg = model.config
    neuron = cfg.neuron()
    return {
        "format": FORMAT,
        "variant": cfg.variant, "scale": cfg.scale, "classes": list(cfg.class_names or ()),
        "input": {"shape": [2, *cfg.padded_size], "what": "one time bin of the stacked histogram: ON/OFF event "
                  "counts, letterboxed and zero-padded", "bins_per_window": cfg.bins, "window_us": cfg.window_us,
                  "cutoff": cfg.cutoff},
        "dt_s": dt, "step_us": cfg.window_us / cfg.bins,
        "quantization": {"weight_bits": cfg.weight_bits if cfg.quantized else 32,
                         "first_layer_bits": cfg.first_layer_bits if cfg.quantized else 32,
                         "weights": "exported dequantized (codes × scale), BN folded",
                         "membrane": ({"lb": neuron.lb, "ub": neuron.ub, "step": neuron.step,
                                       "rule": "after each step the membrane (in units of θ) is rounded to the "
                                               "nearest level and clamped to [lb, ub]; NIR integrates in float"}
                                      if neuron.quantize_membrane else "float32")},
        "outputs": outputs,
        "flat_outputs": {name: shape for name, shape in flat_shapes.items() if name in outputs},
        "left_out": "the Detect head (ultralytics, DFL) over each output's spike rate averaged over the window's bins",
    }


def export_nir(model: SpikingYOLO, path: str | os.PathLike[str], dt: float = DEFAULT_DT) -> Path:
    """Write ``model``'s spiking part as a NIR file (HDF5, gzip) at ``path``; returns the path."""
    nir = _nir()
    if not isinstance(model, SpikingYOLO):
        raise NirExportError("NIR export needs a trained checkpoint (.pt), not an exported integer model")
    graph = to_nir(model.eval(), dt)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nir.write(path, graph)
    return path


def reference_spikes(model: SpikingYOLO, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Our model's spikes ``[T, B, C, h, w]`` at every LIF node for the window ``x`` (``[T, B, 2, H, W]``), fresh
    state: what a NIR consumer's LIFs should emit."""
    spikes: dict[str, torch.Tensor] = {}
    handles = [node.module.register_forward_hook(
        lambda module, args, out, name=node.name: spikes.__setitem__(name, out[0].detach().clone()))
        for node in model.graph.of_kind("lif")]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for handle in handles:
            handle.remove()
    return spikes
