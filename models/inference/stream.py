"""Streaming detection: one window at a time, state carried — the single code path of eval, predict and the service.

``StreamingDetector.step(events, t_start, state) -> (detections, state)`` turns one window of sensor events into
boxes in the sensor's coordinates, stamped with the window's end time; ``run`` does it for a whole recording;
:func:`step_batch` runs one window of each of several streams as one forward pass (the service under load);
:func:`run_recordings` streams whole recordings through a model while something measures it. The
model is anything with a ``config`` and ``model(x, state) -> (y, state)``: the trained (fake-quant or FP32)
:class:`~models.networks.detector.SpikingYOLO` or the integer :class:`~models.inference.runtime.Runtime` on torch
tensors, or the torch-free :class:`~models.inference.numpy_runtime.NumpyRuntime` on numpy arrays.

This module imports no torch: serving an exported model must not need it (DESIGN §6). What depends on the kind of
model — the input array, the forward pass (under ``torch.inference_mode``), batching states and NMS (ultralytics'
for torch models, :func:`~models.inference.numpy_detect.non_max_suppression`, its numpy port, for the numpy
engine) — is an :class:`_Arrays` chosen once per detector; the torch one imports torch when it is built, which only
happens for a torch model (so torch is already loaded).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from data.formats.labels import BBOX_DTYPE
from data.formats.recording import open_recording
from data.geometry import Letterbox
from data.representation import StackedHistogram
from data.windows import Window, iter_windows
from models.inference.numpy_detect import non_max_suppression as numpy_nms
from models.inference.numpy_runtime import NumpyRuntime

if TYPE_CHECKING:
    from models.inference.numpy_runtime import SpqConfig
    from models.networks.detector import DetectorConfig


class StreamModel(Protocol):
    """What a streaming detector runs: ``model(x [T, B, 2, H, W], state) -> ([B, 4 + nc, anchors], state)`` (torch
    tensors, or numpy arrays for a :class:`NumpyRuntime`); with ``observe=`` for a :class:`SpikeMeter`."""

    config: DetectorConfig | SpqConfig

    def __call__(self, x: Any, state: Any = None) -> tuple[Any, Any]: ...


class _Arrays(Protocol):
    """The model-kind-specific steps of a window: input, forward pass, batched states, NMS."""

    def forward(self, model: StreamModel, counts: np.ndarray, state: Any, meter: SpikeMeter | None) -> tuple[
            Any, Any]: ...

    def stack(self, model: StreamModel, states: Sequence[Any]) -> Any: ...

    def split(self, state: Any, count: int) -> list[Any]: ...

    def nms(self, y: Any, conf_thres: float, iou_thres: float, max_det: int) -> np.ndarray: ...


class _NumpyArrays:
    """A :class:`NumpyRuntime`: numpy in, numpy out, numpy NMS; states are flat dicts of int8 arrays."""

    def forward(self, model: StreamModel, counts: np.ndarray, state: Any, meter: SpikeMeter | None) -> tuple[
            Any, Any]:
        return model(np.asarray(counts), state) if meter is None else model(np.asarray(counts), state, observe=meter)

    def stack(self, model: StreamModel, states: Sequence[Any]) -> Any:
        if all(s is None for s in states):
            return None
        fresh = model.init_state(1)  # type: ignore[attr-defined]
        parts = [fresh if s is None else s for s in states]
        if any(p.keys() != fresh.keys() for p in parts):
            raise ValueError("states to stack must come from the same model (different layer names)")
        return {name: np.concatenate([p[name] for p in parts]) for name in fresh}

    def split(self, state: Any, count: int) -> list[Any]:
        # copies: a stream's state must not keep the whole batch's memory alive
        return [{name: codes[i : i + 1].copy() for name, codes in state.items()} for i in range(count)]

    def nms(self, y: Any, conf_thres: float, iou_thres: float, max_det: int) -> np.ndarray:
        (dets,) = numpy_nms(np.asarray(y), conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det)
        return dets


class _TorchArrays:
    """A torch model (trained or integer :class:`~models.inference.runtime.Runtime`): tensors, ultralytics' NMS."""

    def __init__(self) -> None:
        import torch  # lazy: only torch models come here, and they have loaded torch already

        from models.networks.state import split_state, stack_states
        from models.networks.ultralytics_parts import non_max_suppression

        self.torch, self._split, self._stack, self._nms = torch, split_state, stack_states, non_max_suppression

    def forward(self, model: StreamModel, counts: np.ndarray, state: Any, meter: SpikeMeter | None) -> tuple[
            Any, Any]:
        with self.torch.inference_mode():
            x = self.torch.as_tensor(counts)
            return model(x, state) if meter is None else model(x, state, observe=meter)

    def stack(self, model: StreamModel, states: Sequence[Any]) -> Any:
        return self._stack(states)

    def split(self, state: Any, count: int) -> list[Any]:
        return self._split(state, [1] * count)

    def nms(self, y: Any, conf_thres: float, iou_thres: float, max_det: int) -> np.ndarray:
        with self.torch.inference_mode():  # y is an inference tensor of the forward pass
            y = self.torch.as_tensor(y)
            (dets,) = self._nms(y, conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det, nc=y.shape[1] - 4)
            return dets.numpy()


_NUMPY_ARRAYS = _NumpyArrays()


@functools.cache
def _torch_arrays() -> _TorchArrays:
    return _TorchArrays()


def _arrays_of(model: StreamModel) -> _Arrays:
    return _NUMPY_ARRAYS if isinstance(model, NumpyRuntime) else _torch_arrays()


def _is_torch_module(model: Any) -> bool:
    torch = sys.modules.get("torch")  # not imported: then the model cannot be a torch module
    return torch is not None and isinstance(model, torch.nn.Module)


def input_histogram(config: Any) -> StackedHistogram:
    """The network input of a detector ``config``: a window's events binned into ``[T, 2, H, W]`` counts at the input
    size — the one transform that training, evaluation, prediction and the service share."""
    return StackedHistogram(bins=config.bins, window_us=config.window_us, height=config.input_height,
                            width=config.input_width, cutoff=config.cutoff)


class StreamingDetector:
    """A detector plus its input representation and NMS, for batch-1 streams of windows.

    Thread-safe for independent states: the model is only read, and each caller owns its ``state``.
    """

    def __init__(
        self,
        model: StreamModel,
        conf_thres: float = 0.25,
        iou_thres: float = 0.6,
        max_det: int = 100,
        sensor_size: tuple[int, int] | None = None,
    ) -> None:
        self.model = model.eval() if _is_torch_module(model) else model
        self._arrays = _arrays_of(model)
        cfg = model.config
        self.histogram = input_histogram(cfg)
        self.conf_thres, self.iou_thres, self.max_det = conf_thres, iou_thres, max_det
        width, height = sensor_size or cfg.sensor_size  # default: the sensor the model was trained for
        self.letterbox = Letterbox(width, height, cfg.input_width, cfg.input_height)

    @property
    def window_us(self) -> int:
        """Window length Δ in µs."""
        return self.model.config.window_us

    def for_sensor(self, width: int, height: int) -> StreamingDetector:
        """The same detector for recordings of a ``width`` × ``height`` sensor (letterboxed into the input)."""
        return StreamingDetector(self.model, self.conf_thres, self.iou_thres, self.max_det, (width, height))

    def init_state(self) -> Any:
        """A fresh state (created lazily by the first step)."""
        return None

    def step(self, events: np.ndarray, t_start: int, state: Any = None) -> tuple[np.ndarray, Any]:
        """Detect in the window ``[t_start, t_start + Δ)`` of sensor ``events``; returns label-dtype boxes."""
        dets, state = self.detect(self.counts(events, t_start), state)
        return self._to_boxes(dets, t_start + self.window_us), state

    def counts(self, events: np.ndarray, t_start: int) -> np.ndarray:
        """The network input of one window: its events letterboxed and binned, ``[T, 2, H, W]`` uint8."""
        return self.histogram(self.letterbox.map_events(events), t_start)

    def detect(self, counts: np.ndarray, state: Any = None) -> tuple[np.ndarray, Any]:
        """Network and NMS on one window's ``[T, 2, H, W]`` histogram: ``[n, 6]`` rows ``x1, y1, x2, y2, score,
        class`` in input pixels, and the new state."""
        y, state = self._arrays.forward(self.model, np.asarray(counts)[:, None], state, None)  # [T, 1, 2, H, W] in
        return self._nms(y), state  # y [1, 4 + nc, anchors]

    def _nms(self, y: Any) -> np.ndarray:
        """``[1, 4 + nc, anchors]`` → ``[n, 6]`` rows x1, y1, x2, y2, score, class."""
        return self._arrays.nms(y, self.conf_thres, self.iou_thres, self.max_det)

    def run(self, windows: Iterable[Window], state: Any = None) -> Iterator[tuple[Window, np.ndarray]]:
        """Detections of every window, in order, with the state carried from one window to the next."""
        for window in windows:
            dets, state = self.step(window.events, window.t_start, state)
            yield window, dets

    def boxes(self, y: Any, t_start: int) -> np.ndarray:
        """Label-dtype sensor boxes of the window starting at ``t_start`` from its network output
        ``[1, 4 + nc, anchors]`` (NMS, letterbox undone, stamped with the window's end)."""
        return self._to_boxes(self._nms(y), t_start + self.window_us)

    def _to_boxes(self, dets: np.ndarray, t: int) -> np.ndarray:
        boxes = np.zeros(len(dets), dtype=BBOX_DTYPE)
        boxes["t"] = t
        boxes["x"], boxes["y"] = dets[:, 0], dets[:, 1]
        boxes["w"], boxes["h"] = dets[:, 2] - dets[:, 0], dets[:, 3] - dets[:, 1]
        boxes["class_id"] = dets[:, 5].astype(np.uint32)
        boxes["class_confidence"] = dets[:, 4]
        return self.letterbox.boxes_to_sensor(boxes)


@dataclass(frozen=True)
class WindowJob:
    """One window of one stream: its detector (sensor size, thresholds), events, start time and state."""

    detector: StreamingDetector
    events: np.ndarray
    t_start: int
    state: Any = None


class SpikeMeter:
    """Counts the spikes of every LIF node during one forward pass, per stream: pass it as the model's ``observe``.

    :meth:`rates` gives each stream's firing rate, spikes per neuron and time step over the whole network. Spikes
    come as ``[T, B, C, h, w]`` 0/1 torch tensors or numpy arrays (the numpy engine shows its observers that layout).
    """

    def __init__(self) -> None:
        self.spikes: np.ndarray | None = None  # [B] float64
        self.neuron_steps = 0

    def __call__(self, node: Any, value: Any) -> None:
        if node.kind != "lif":
            return
        if isinstance(value, np.ndarray):  # a count per stream: 7x faster than a sum over four axes of a view
            counts = np.array([np.count_nonzero(value[:, b]) for b in range(value.shape[1])], dtype=np.float64)
        else:  # a torch tensor: its own methods, so this module needs no torch import
            # a float32 sum of 0/1 is exact below 2^24 spikes per layer and stream (the largest layer holds ~4·10^5)
            counts = value.sum(dim=(0, 2, 3, 4)).double().cpu().numpy()
        self.spikes = counts if self.spikes is None else self.spikes + counts
        self.neuron_steps += value.shape[0] * int(np.prod(value.shape[2:]))

    def rates(self) -> list[float]:
        """Spikes per neuron and time step of each stream of the last forward pass."""
        if self.spikes is None:
            raise ValueError("the meter has seen no spiking layer; pass it as the model's observe")
        return (self.spikes / self.neuron_steps).tolist()


def step_batch(jobs: Sequence[WindowJob], meter: SpikeMeter | None = None) -> list[tuple[np.ndarray, Any]]:
    """:meth:`StreamingDetector.step` for windows of several streams in one forward pass.

    The jobs' detectors must share one model; each job keeps its own sensor size, thresholds and state (the states
    are stacked along the batch dimension and split again). Returns ``(boxes, new state)`` per job, in order; a
    ``meter`` (:class:`SpikeMeter`) given here counts the pass's spikes per job.
    """
    if not jobs:
        return []
    model = jobs[0].detector.model
    if any(job.detector.model is not model for job in jobs):
        raise ValueError("step_batch: every job's detector must run the same model")
    arrays = jobs[0].detector._arrays
    x = np.stack([job.detector.counts(job.events, job.t_start) for job in jobs], axis=1)
    stacked = arrays.stack(model, [job.state for job in jobs])
    y, state = arrays.forward(model, x, stacked, meter)  # x [T, B, 2, H, W] → y [B, 4 + nc, anchors]
    states = arrays.split(state, len(jobs))
    return [(job.detector.boxes(y[i : i + 1], job.t_start), states[i]) for i, job in enumerate(jobs)]


def run_recordings(
    model: StreamModel, paths: Iterable[str | os.PathLike[str]], max_windows: int = 0, progress: bool = False
) -> int:
    """Stream recordings through ``model`` window by window, state carried, as ``eval`` does; returns the windows run.

    ``max_windows`` (0 = all) bounds the total; the windows are split evenly over the recordings. Measurements
    (FLOPs counters, calibration hooks) watch the model while this runs.
    """
    from tqdm import tqdm  # lazy: a measuring tool's dependency, not the service's

    paths = list(paths)
    if not paths:
        raise ValueError("no recordings to measure on")
    detector = StreamingDetector(model)
    per_recording = -(-max_windows // len(paths)) if max_windows > 0 else 0
    done = 0
    bar = tqdm(total=max_windows or None, desc="measure", unit="win", disable=not progress, leave=False)
    for path in paths:
        recording = open_recording(path)
        if recording.width is None or recording.height is None:
            raise ValueError(f"{path}: sensor size unknown; the header has no geometry")
        stream = detector.for_sensor(recording.width, recording.height)
        for k, _ in enumerate(stream.run(iter_windows(recording, stream.window_us))):
            done += 1
            bar.update()
            if (per_recording and k + 1 >= per_recording) or (max_windows and done >= max_windows):
                break
        if max_windows and done >= max_windows:
            break
    bar.close()
    return done
