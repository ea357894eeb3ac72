"""``spquant info PATH [--json]``: what a recording or a label file holds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from data.formats.labels import GEN1_CLASSES, read_labels
from data.formats.recording import open_recording

_NPY_MAGIC = b"\x93NUMPY"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``info``."""
    parser = subparsers.add_parser(
        "info", help="describe a recording (.dat/.raw) or a label file (_bbox.npy)", description=__doc__
    )
    parser.add_argument("path", type=Path, help="a Prophesee DAT/RAW recording or a *_bbox.npy label file")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=run)


def recording_info(path: Path, progress: bool = False) -> dict[str, Any]:
    """Format, geometry, event count, time span and polarity counts, computed by streaming the file once."""
    recording = open_recording(path)
    events = on = 0
    t_first = t_last = None
    ordered = True
    previous = -1
    with tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, disable=not progress, leave=False, delay=1.0
    ) as bar:
        for chunk in recording.iter_chunks():
            t = chunk["t"]
            t_first = int(t[0]) if t_first is None else t_first
            ordered = ordered and int(t[0]) >= previous and bool(np.all(t[1:] >= t[:-1]))
            previous = t_last = int(t[-1])
            events += len(chunk)
            on += int(np.count_nonzero(chunk["p"]))
            bar.update(len(chunk) * (8 if recording.format == "dat" else 3))
    duration = (t_last - t_first) if events else 0
    return {
        "path": str(path),
        "format": recording.format,
        "width": recording.width,
        "height": recording.height,
        "events": events,
        "t_first": t_first,
        "t_last": t_last,
        "duration_us": duration,
        "on": on,
        "off": events - on,
        "event_rate_per_s": round(events / (duration / 1e6), 1) if duration else None,
        "time_ordered": ordered,
        "bytes": path.stat().st_size,
    }


def labels_info(path: Path) -> dict[str, Any]:
    """Box counts per class, label timestamps and tracks of a ``*_bbox.npy`` file."""
    boxes = read_labels(path)
    times = np.unique(boxes["t"])
    per_class = {
        (GEN1_CLASSES[c] if c < len(GEN1_CLASSES) else str(c)): int(n)
        for c, n in zip(*np.unique(boxes["class_id"], return_counts=True), strict=True)
    }
    return {
        "path": str(path),
        "format": "labels",
        "boxes": len(boxes),
        "boxes_per_class": per_class,
        "label_timestamps": len(times),
        "t_first": int(times[0]) if len(times) else None,
        "t_last": int(times[-1]) if len(times) else None,
        "tracks": len(np.unique(boxes["track_id"])),
        "label_rate_hz": round((len(times) - 1) / ((times[-1] - times[0]) / 1e6), 2) if len(times) > 1 else None,
    }


def run(args: argparse.Namespace) -> int:
    """Print the description of ``args.path``."""
    path: Path = args.path
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    with open(path, "rb") as f:
        is_npy = f.read(6) == _NPY_MAGIC
    info = labels_info(path) if is_npy else recording_info(path, progress=not args.json)
    if args.json:
        print(json.dumps(info))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            shown = ", ".join(f"{k}: {v}" for k, v in value.items()) if isinstance(value, dict) else value
            print(f"{key:<{width}}  {shown}")
    return 0
