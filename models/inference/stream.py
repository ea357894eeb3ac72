"""Streaming detection: one window at a time, state carried — the single code path of eval, predict and the service.

``StreamingDetector.step(events, t_start, state) -> (detections, state)`` turns one window of sensor events into
boxes in the sensor's coordinates, stamped with the window's end time; ``run`` does it for a whole recording;
:func:`step_batch` runs one window of each of several streams as one forward pass (the service under load);
:func:`run_recordings` streams whole recordings through a model while something measures it. The
model is anything with a ``config`` and ``model(x, state) -> (y, state)``: the trained (fake-quant or FP32)
:class:`~models.networks.detector.SpikingYOLO` or the integer :class:`~models.inference.runtime.Runtime`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from data.formats.labels import BBOX_DTYPE
from data.formats.recording import open_recording
from data.geometry import Letterbox
from data.representation import StackedHistogram
from data.windows import Window, iter_windows
from models.networks.detector import DetectorConfig
from models.networks.state import split_state, stack_states
from models.networks.ultralytics_parts import non_max_suppression


class StreamModel(Protocol):
    """What a streaming detector runs: ``model(x [T, B, 2, H, W], state) -> ([B, 4 + nc, anchors], state)``."""

    config: DetectorConfig

    def __call__(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]: ...


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
        self.model = model.eval() if isinstance(model, torch.nn.Module) else model
        cfg = model.config
        self.histogram = StackedHistogram(
            bins=cfg.bins, window_us=cfg.window_us, height=cfg.input_height, width=cfg.input_width, cutoff=cfg.cutoff
        )
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

    @torch.inference_mode()
    def detect(self, counts: np.ndarray | torch.Tensor, state: Any = None) -> tuple[np.ndarray, Any]:
        """Network and NMS on one window's ``[T, 2, H, W]`` histogram: ``[n, 6]`` rows ``x1, y1, x2, y2, score,
        class`` in input pixels, and the new state."""
        x = torch.as_tensor(counts).unsqueeze(1)  # [T, 1, 2, H, W]
        y, state = self.model(x, state)  # [1, 4 + nc, anchors]
        return self._nms(y), state

    def _nms(self, y: torch.Tensor) -> np.ndarray:
        """``[1, 4 + nc, anchors]`` → ``[n, 6]`` rows x1, y1, x2, y2, score, class."""
        (dets,) = non_max_suppression(
            y, conf_thres=self.conf_thres, iou_thres=self.iou_thres, max_det=self.max_det, nc=y.shape[1] - 4
        )
        return dets.numpy()

    def run(self, windows: Iterable[Window], state: Any = None) -> Iterator[tuple[Window, np.ndarray]]:
        """Detections of every window, in order, with the state carried from one window to the next."""
        for window in windows:
            dets, state = self.step(window.events, window.t_start, state)
            yield window, dets

    def boxes(self, y: torch.Tensor, t_start: int) -> np.ndarray:
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

    :meth:`rates` gives each stream's firing rate, spikes per neuron and time step over the whole network.
    """

    def __init__(self) -> None:
        self.spikes: torch.Tensor | None = None  # [B]
        self.neuron_steps = 0

    def __call__(self, node: Any, value: Any) -> None:
        if node.kind != "lif":
            return
        spikes = torch.as_tensor(value)  # [T, B, C, h, w] of 0/1
        # a float32 sum of 0/1 is exact below 2^24 spikes per layer and stream (the largest layer holds ~4·10^5)
        counts = spikes.sum(dim=(0, 2, 3, 4)).double()  # [B]
        self.spikes = counts if self.spikes is None else self.spikes + counts
        self.neuron_steps += spikes.shape[0] * spikes[0, 0].numel()

    def rates(self) -> list[float]:
        """Spikes per neuron and time step of each stream of the last forward pass."""
        if self.spikes is None:
            raise ValueError("the meter has seen no spiking layer; pass it as the model's observe")
        return (self.spikes / self.neuron_steps).tolist()


@torch.inference_mode()
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
    x = torch.from_numpy(np.stack([job.detector.counts(job.events, job.t_start) for job in jobs], axis=1))
    stacked = stack_states([job.state for job in jobs])
    # x [T, B, 2, H, W] → y [B, 4 + nc, anchors]
    y, state = model(x, stacked) if meter is None else model(x, stacked, observe=meter)
    states = split_state(state, [1] * len(jobs))
    return [(job.detector.boxes(y[i : i + 1], job.t_start), states[i]) for i, job in enumerate(jobs)]


def run_recordings(
    model: StreamModel, paths: Iterable[str | os.PathLike[str]], max_windows: int = 0, progress: bool = False
) -> int:
    """Stream recordings through ``model`` window by window, state carried, as ``eval`` does; returns the windows run.

    ``max_windows`` (0 = all) bounds the total; the windows are split evenly over the recordings. Measurements
    (FLOPs counters, calibration hooks) watch the model while this runs.
    """
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
