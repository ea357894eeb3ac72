"""``spquant predict SOURCE [--model PATH] --out DETS.npy``: detections for every window of a recording.

SOURCE is a Prophesee ``.dat`` or ``.raw`` (EVT 2.0/3.0) file of any sensor size: events are letterboxed into the
model's input and boxes mapped back to the recording's coordinates. A file whose header names no sensor size (a
headerless DAT, a RAW without geometry) is taken to come from the sensor the model was trained for; events off the
sensor or out of time order are an error. The output is a ``.npy`` in the Gen1 label dtype, one set of boxes per
window, stamped with the window's end time (``spquant show --detections`` draws it). ``--denoise-us N`` drops a real
camera's isolated noise events first (tonic's background-activity filter, streamed: :mod:`data.denoise`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app.commands.info import checked_chunks
from app.commands.model_option import add_model_option, load_model
from data.denoise import BackgroundActivityFilter
from data.formats.labels import BBOX_DTYPE, GEN1_CLASSES, write_labels
from data.formats.recording import Recording, header_geometry, open_recording
from data.windows import iter_windows
from models.inference.stream import StreamingDetector, StreamModel


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``predict``."""
    parser = subparsers.add_parser("predict", help="detect objects in a recording", description=__doc__)
    parser.add_argument("source", type=Path, help="a .dat or .raw recording")
    add_model_option(parser)
    parser.add_argument("--out", type=Path, required=True, help="output .npy (label dtype)")
    parser.add_argument("--conf", type=float, default=0.25, help="score threshold (default 0.25)")
    parser.add_argument("--iou", type=float, default=0.6, help="NMS IoU threshold (default 0.6)")
    parser.add_argument("--denoise-us", type=int, default=0, metavar="N",
                        help="drop events with no event at a neighbouring pixel in the N µs before (background-"
                             "activity filter for real cameras; e.g. 10000; default 0 = off)")
    parser.set_defaults(func=run)


def predict_recording(
    model: StreamModel, recording: Recording, conf_thres: float = 0.25, iou_thres: float = 0.6, denoise_us: int = 0,
    progress: bool = True,
) -> tuple[np.ndarray, int, BackgroundActivityFilter | None]:
    """Stream ``recording`` window by window through ``model`` (denoised first when ``denoise_us > 0``); returns the
    detections of all windows, the number of windows and the filter (with its event counts) if one ran."""
    if header_geometry(recording) is None:  # no sensor size in the header: the one the model was trained for
        recording = open_recording(recording.path, *model.config.sensor_size)
    detector = StreamingDetector(model, conf_thres=conf_thres, iou_thres=iou_thres)
    stream = detector.for_sensor(recording.width, recording.height)
    chunks = checked_chunks(recording)
    denoiser = BackgroundActivityFilter(recording.width, recording.height, denoise_us) if denoise_us else None
    if denoiser is not None:
        chunks = map(denoiser, chunks)
    windows = tqdm(stream.run(iter_windows(chunks, stream.window_us)), unit="window", desc="predict", delay=1.0,
                   disable=not progress)
    parts = [dets for _, dets in windows]
    detections = np.concatenate(parts, dtype=BBOX_DTYPE) if parts else np.zeros(0, BBOX_DTYPE)
    return detections, len(parts), denoiser


def run(args: argparse.Namespace) -> int:
    """Stream the recording window by window and write the detections."""
    if not 0 <= args.conf <= 1 or not 0 <= args.iou <= 1:
        raise ValueError("--conf and --iou must lie in [0, 1]")
    if args.denoise_us < 0:
        raise ValueError(f"--denoise-us must be >= 0 (0 = off), got {args.denoise_us}")
    recording = open_recording(args.source)  # a foreign file fails before the model loads
    model = load_model(args)
    detections, windows, denoiser = predict_recording(model, recording, args.conf, args.iou, args.denoise_us)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_labels(args.out, detections)
    names = model.config.class_names or GEN1_CLASSES
    counts = {name: int((detections["class_id"] == i).sum()) for i, name in enumerate(names)}
    print(f"wrote {args.out}: {windows} windows, {len(detections)} detections {counts}")
    if denoiser is not None:
        print(f"denoise {denoiser.filter_time} µs: kept {denoiser.events_out} of {denoiser.events_in} events")
    return 0
