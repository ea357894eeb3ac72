"""``spquant show PATH --out FILE.png|FILE.mp4``: event frames of a recording with their label (and detection) boxes.

A frame at time ``t`` shows the events of ``[t - window, t)``: ON events light, OFF events blue, and the boxes whose
timestamp is nearest to ``t``. Labels next to a ``<name>_td.dat`` (``<name>_bbox.npy``) are found automatically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from app.render import Style, boxes_near, render_frame
from data.formats.dat import GEN1_HEIGHT, GEN1_WIDTH
from data.formats.labels import BBOX_DTYPE, read_labels
from data.formats.recording import open_recording
from data.windows import iter_windows

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".avi")


def _milliseconds(text: str) -> float:
    value = float(text)
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a time in ms >= 0, got {text!r}")
    return value


def _positive(text: str) -> float:
    value = _milliseconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a value > 0, got {text!r}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``show``."""
    parser = subparsers.add_parser(
        "show",
        help="render event frames with boxes to a PNG or an MP4",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", type=Path, help="a recording (.dat or .raw)")
    parser.add_argument("--out", type=Path, required=True, help="FILE.png for one frame, FILE.mp4 for a video")
    parser.add_argument(
        "--t",
        type=_milliseconds,
        metavar="MS",
        help="time of the (first) frame in ms; default: the end of the first window with events",
    )
    parser.add_argument(
        "--window", type=_positive, default=50.0, metavar="MS", help="span of events in each frame, in ms (default 50)"
    )
    parser.add_argument("--duration", type=_positive, metavar="MS", help="video length (default: to the end)")
    parser.add_argument("--fps", type=_positive, help="video frame rate (default: real time, 1000/window)")
    parser.add_argument(
        "--labels",
        type=Path,
        metavar="PATH",
        help="label .npy (default: <name>_bbox.npy next to <name>_td.dat, if present)",
    )
    parser.add_argument(
        "--detections",
        type=Path,
        metavar="PATH",
        help="detections .npy in the label dtype (score in class_confidence), drawn in magenta",
    )
    parser.add_argument(
        "--tolerance",
        type=_milliseconds,
        default=125.0,
        metavar="MS",
        help="draw the boxes stamped nearest to the frame time if within this (Gen1 labels: ~4 Hz)",
    )
    parser.add_argument("--scale", type=int, choices=range(1, 9), default=3, metavar="N", help="upscaling (1-8)")
    parser.set_defaults(func=run)


def default_labels(path: Path) -> Path | None:
    """``<name>_bbox.npy`` beside ``<name>_td.dat`` (or beside ``<name>.<ext>``), if it exists."""
    name = path.name
    base = name[: -len("_td.dat")] if name.endswith("_td.dat") else path.stem
    candidate = path.with_name(f"{base}_bbox.npy")
    return candidate if candidate.is_file() else None


def _fail(message: str) -> int:
    print(f"spquant show: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Render the frame(s) and write ``--out``."""
    suffix = args.out.suffix.lower()
    if suffix not in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
        return _fail(f"--out must end in one of {', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)}, got {args.out.name!r}")
    if not args.out.parent.is_dir():
        return _fail(f"output folder {args.out.parent} does not exist")
    recording = open_recording(args.path)
    labels_path = args.labels or default_labels(args.path)
    labels = read_labels(labels_path) if labels_path else np.zeros(0, BBOX_DTYPE)
    detections = read_labels(args.detections) if args.detections else np.zeros(0, BBOX_DTYPE)
    window, tolerance = round(args.window * 1000), round(args.tolerance * 1000)
    width, height = recording.width or GEN1_WIDTH, recording.height or GEN1_HEIGHT
    style = Style(scale=args.scale)
    if args.t is not None:
        start = round(args.t * 1000)
    else:  # the end of the first aligned window that holds an event
        first = next(iter(recording.iter_chunks()), None)
        start = (int(first["t"][0]) // window + 1) * window if first is not None else window
    source = f"labels from {labels_path}" if labels_path else "no labels"

    def frame(events: np.ndarray, t: int) -> np.ndarray:
        caption = f"{args.path.name}  [{(t - window) / 1000:.1f}, {t / 1000:.1f}) ms  {len(events)} events"
        return render_frame(
            events,
            width,
            height,
            boxes_near(labels, t, tolerance),
            boxes_near(detections, t, tolerance),
            caption,
            style,
        )

    if suffix in IMAGE_SUFFIXES:
        events = recording.read(max(start - window, 0), start)
        if not cv2.imwrite(str(args.out), frame(events, start)):
            return _fail(f"could not write {args.out}")
        print(f"wrote {args.out}: {len(events)} events in [{(start - window) / 1000:g}, {start / 1000:g}) ms, {source}")
        return 0

    fps = args.fps or 1000.0 / args.window
    size = (width * style.scale, height * style.scale)
    out = args.out
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*("mp4v" if suffix == ".mp4" else "MJPG")), fps, size)
    if not writer.isOpened() and suffix == ".mp4":
        out = out.with_suffix(".avi")
        print(f"note: this OpenCV cannot encode mp4v; writing Motion-JPEG {out} instead", file=sys.stderr)
        writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    if not writer.isOpened():
        return _fail(f"could not open a video writer for {out}")
    # Frames are the aligned windows [kΔ, (k+1)Δ) that predict and eval use, so detections land on their frame.
    end = start + round(args.duration * 1000) if args.duration else None
    frames = 0
    try:
        for w in tqdm(
            iter_windows(recording, window, max(start - window, 0), end), unit="frame", disable=None, leave=False
        ):
            writer.write(frame(w.events, w.t_end))
            frames += 1
    finally:
        writer.release()
    print(f"wrote {out}: {frames} frames of {args.window:g} ms at {fps:g} fps, {source}")
    return 0
