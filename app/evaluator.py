"""Evaluation engine: stream every recording of a split through the detector exactly as deployment does, then score.

Each recording is cut into consecutive windows (``data.windows``), each window goes through
:class:`~models.inference.stream.StreamingDetector` with the state carried from the previous one, and every window's
detections carry its end time. Scoring (``app.prophesee``) then takes, for each ground-truth timestamp, the
detections of the window whose end is nearest — the same windows ``spquant predict`` and the service produce.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from app.prophesee import evaluate_detections
from data.formats.labels import BBOX_DTYPE, read_labels
from data.formats.recording import open_recording
from data.gen1 import list_recordings
from data.windows import iter_windows
from models.inference.stream import StreamingDetector

if TYPE_CHECKING:  # a type only: evaluating an exported model needs no torch
    from models.networks.detector import SpikingYOLO


@dataclass
class RecordingDetections:
    """Ground truth and detections of one recording."""

    name: str
    labels: np.ndarray
    detections: np.ndarray


def detect_recording(detector: StreamingDetector, path: str | os.PathLike[str]) -> np.ndarray:
    """Detections (label dtype, ``t`` = window end) of every window of the recording at ``path``."""
    recording = open_recording(path)
    if recording.width is None or recording.height is None:
        raise ValueError(f"{path}: sensor size unknown; the header has no geometry")
    stream = detector.for_sensor(recording.width, recording.height)
    parts = [dets for _, dets in stream.run(iter_windows(recording, stream.window_us))]
    return np.concatenate(parts, dtype=BBOX_DTYPE) if parts else np.zeros(0, BBOX_DTYPE)


def evaluate_split(
    model: SpikingYOLO,
    root: str | os.PathLike[str],
    split: str,
    max_recordings: int = 0,
    conf_thres: float = 0.001,
    iou_thres: float = 0.6,
    max_det: int = 100,
    progress: bool = True,
) -> tuple[dict, list[RecordingDetections]]:
    """Prophesee-protocol metrics of ``model`` on ``root/split`` and the per-recording detections."""
    recordings = list_recordings(root, split)
    if max_recordings > 0:
        recordings = recordings[:max_recordings]
    detector = StreamingDetector(model, conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det)
    results = []
    for files in tqdm(recordings, desc=f"eval {split}", unit="rec", disable=not progress, leave=False):
        detections = detect_recording(detector, files.events)
        results.append(RecordingDetections(files.name, read_labels(files.labels), detections))
    metrics = evaluate_detections([(r.labels, r.detections) for r in results], classes=model.config.class_names)
    metrics["recordings"] = len(results)
    return metrics, results
