"""ONNX export of the integer runtime's single step ``(x, *state) -> (y, *state)`` with a flat tensor state.

The graph holds the same integer arithmetic as :class:`~models.inference.runtime.Runtime` (its PyTorch-op path):
Conv over integer-valued float32 inputs, int64 Mul/Add and floor divisions by powers of two (exact ``Div`` + ``Mod``
correction on int64), Clip and Where for the LIF, int8 membranes in and out, then the float Detect head. Inputs are
``x`` (uint8 ``[T, 1, 2, H, W]``) and one int8 tensor per LIF (names from :func:`state_names`); outputs ``y`` and
``new.<name>`` for each. The detector config travels in the model's metadata (``spquant``), so
:class:`OnnxStepModel` runs a file behind :class:`~models.inference.stream.StreamingDetector` with ONNX Runtime
alone.

The export uses PyTorch's TorchScript-based exporter: the newer torch.export-based one turns int64 floor division
into float32 ``Div`` + ``Floor``, which is not exact for fixed-point values above 2^24.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.inference.runtime import ReferenceOps, Runtime, State
from models.inference.spq import ExportFormatError
from models.networks.detector import DetectorConfig

OPSET = 17


def state_names(runtime: Runtime) -> list[str]:
    """The LIF names in the order of the ONNX state inputs and outputs."""
    return sorted(runtime.state_shapes)


class _Step(nn.Module):
    """``runtime`` on its reference ops (PyTorch integer ops, not compiled kernels: what ONNX can trace), with its
    state as positional tensors (what ONNX needs)."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime, self.names, self.ops = runtime, state_names(runtime), ReferenceOps(runtime)

    def forward(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        y, new = self.runtime.run(x, dict(zip(self.names, state, strict=True)), self.ops)
        return (y, *(new[n] for n in self.names))


def export_onnx(runtime: Runtime, path: str | os.PathLike[str]) -> Path:
    """Write the batch-1 single step of ``runtime`` to ``path`` (needs the ``onnx`` package).

    Raises :class:`ExportFormatError` for a model with channel gates, before writing anything: a traced step would
    freeze one window's channel masks into the graph."""
    gated = [node.name for node in runtime.graph.of_kind("gated_conv")]
    if gated:
        raise ExportFormatError(f"a model with channel gates ({', '.join(gated)}) has no ONNX step: its gates decide "
                                "per window, which a traced graph cannot; serve its .spq instead")
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    step = _Step(runtime).eval()
    h, w = runtime.config.padded_size
    x = torch.zeros((runtime.config.bins, 1, 2, h, w), dtype=torch.uint8)
    state = runtime.init_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice and tracer warnings
        torch.onnx.export(step, (x, *(state[n] for n in step.names)), str(path), input_names=["x", *step.names],
                          output_names=["y", *(f"new.{n}" for n in step.names)], opset_version=OPSET, dynamo=False)
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {"spquant": json.dumps(runtime.config.to_dict())})
    onnx.save(model, str(path))
    return path


class OnnxStepModel:
    """An exported ONNX step run by ONNX Runtime: ``model(x, state) -> (y, state)`` like the runtime (batch 1)."""

    def __init__(self, path: str | os.PathLike[str], threads: int = 0) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.config = DetectorConfig.from_dict(json.loads(meta["spquant"]))
        inputs = self.session.get_inputs()[1:]
        self.names = [i.name for i in inputs]
        self.shapes = {i.name: tuple(i.shape) for i in inputs}

    def init_state(self) -> State:
        """A fresh state (all membrane codes 0)."""
        return {n: torch.zeros(self.shapes[n], dtype=torch.int8) for n in self.names}

    def __call__(self, x: Tensor, state: Any = None) -> tuple[Tensor, State]:
        state = state if state is not None else self.init_state()
        feeds = {"x": x.numpy().astype(np.uint8, copy=False), **{n: state[n].numpy() for n in self.names}}
        y, *new = self.session.run(None, feeds)
        return torch.from_numpy(y), {n: torch.from_numpy(v) for n, v in zip(self.names, new, strict=True)}
