"""``spquant info PATH [--json]``: what a recording or a label file holds."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from data.errors import EventValidationError
from data.events import validate_events
from data.formats.dat import DatRecording
from data.formats.labels import GEN1_CLASSES, read_labels
from data.formats.recording import Recording, open_recording

_NPY_MAGIC = b"\x93NUMPY"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``info``."""
    parser = subparsers.add_parser(
        "info", help="describe a recording (.dat/.raw) or a label file (_bbox.npy)", description=__doc__
    )
    parser.add_argument("path", type=Path, help="a Prophesee DAT/RAW recording or a *_bbox.npy label file")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=run)


def checked_chunks(recording: Recording, chunks: Iterable[np.ndarray] | None = None) -> Iterator[np.ndarray]:
    """The recording's event chunks (or ``chunks`` read from it), checked while they stream: on its sensor, time
    non-decreasing within and across chunks.

    Raises:
        EventValidationError: names the first offending event, numbered from the start of the file, with a hint when
            a DAT file has no header (random bytes named ``.dat`` decode to such events).
    """
    seen, previous = 0, None
    for chunk in recording.iter_chunks() if chunks is None else chunks:
        problem = _first_problem(chunk, seen, previous, recording.width, recording.height)
        if problem:
            raise EventValidationError(f"{recording.path}: {problem}{_headerless_hint(recording)}")
        if len(chunk):
            seen, previous = seen + len(chunk), int(chunk["t"][-1])
        yield chunk


def _first_problem(chunk: np.ndarray, seen: int, previous: int | None, width: int | None,
                   height: int | None) -> str | None:
    # Own checks rather than validate_events for the common faults: the index must count from the start of the file,
    # and the order must hold across chunk boundaries.
    if len(chunk):
        t = chunk["t"]
        before = np.concatenate(([t[0] if previous is None else previous], t[:-1]))
        back = np.flatnonzero(t < before)
        if back.size:
            i = int(back[0])
            return f"timestamps must not decrease: event {seen + i} has t={int(t[i])} after t={int(before[i])}"
        for name, limit in (("x", width), ("y", height)):
            off = np.flatnonzero(chunk[name] >= limit) if limit else ()
            if len(off):
                i = int(off[0])
                return f"event {seen + i} has {name}={int(chunk[name][i])}, outside a sensor of {width}x{height}"
    try:
        validate_events(chunk, width, height)  # the rest of the contract (polarity, negative times)
    except EventValidationError as exc:
        return f"{exc} (counting within a chunk from event {seen})"
    return None


def _headerless_hint(recording: Recording) -> str:
    if isinstance(recording, DatRecording) and not recording.header.lines:
        return (" (the file has no '%' header, so it was read as bare 8-byte DAT records: is it really a DAT "
                "recording?)")
    return ""


def recording_info(path: Path, progress: bool = False) -> dict[str, Any]:
    """Format, geometry, event count, time span and polarity counts, computed by streaming the file once.

    Raises:
        RecordingFormatError: a foreign, truncated or empty file.
        EventValidationError: events off the sensor or out of time order (see :func:`checked_chunks`).
    """
    recording = open_recording(path)
    events = on = 0
    t_first = t_last = None
    with tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, disable=not progress, leave=False, delay=1.0
    ) as bar:
        for chunk in checked_chunks(recording):
            if not len(chunk):
                continue
            t = chunk["t"]
            t_first = int(t[0]) if t_first is None else t_first
            t_last = int(t[-1])
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
        "time_ordered": True,  # kept for scripts that read it: a file out of order is now an error
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
