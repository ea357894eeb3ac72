"""``spquant score --gt DIR --dt DIR [--json]``: Prophesee-protocol AP of detection files against label files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app.prophesee import evaluate_detections
from data.errors import LabelFormatError
from data.formats.labels import read_labels


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``score``."""
    parser = subparsers.add_parser(
        "score",
        help="score detection files against ground-truth label files (Prophesee protocol)",
        description=__doc__ + " Files are paired by identical names (e.g. rec_bbox.npy in both folders).",
    )
    parser.add_argument("--gt", type=Path, required=True, help="folder of ground-truth *_bbox.npy files")
    parser.add_argument("--dt", type=Path, required=True, help="folder of detection .npy files in the label dtype")
    parser.add_argument(
        "--all-in-tolerance",
        action="store_true",
        help="score every detection within ±50 ms of a label time, not only the nearest timestamp's",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def format_metrics(metrics: dict) -> str:
    """A short human-readable table of the metrics returned by :func:`evaluate_detections`."""
    lines = []
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        value = metrics[key]
        lines.append(f"{key:<6} {'n/a' if value is None else f'{value:.4f}'}")
    for name, value in metrics["per_class"].items():
        lines.append(f"AP[{name}] {'n/a' if value is None else f'{value:.4f}'}")
    lines.append(f"images {metrics['images']}, gt boxes {metrics['gt_boxes']}, detections {metrics['detections']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Pair files, score them, print the result."""
    for folder in (args.gt, args.dt):
        if not folder.is_dir():
            raise FileNotFoundError(f"not a folder: {folder}")
    gt_files = sorted(args.gt.glob("*.npy"))
    if not gt_files:
        raise LabelFormatError(f"no .npy label files in {args.gt}")
    missing = [f.name for f in gt_files if not (args.dt / f.name).is_file()]
    if missing:
        raise LabelFormatError(
            f"{len(missing)} ground-truth file(s) have no detection file in {args.dt}: {missing[:5]}"
        )
    extra = sorted({f.name for f in args.dt.glob("*.npy")} - {f.name for f in gt_files})
    if extra:
        print(f"spquant score: ignoring {len(extra)} detection file(s) without ground truth", file=sys.stderr)
    pairs = [(read_labels(f), read_labels(args.dt / f.name)) for f in gt_files]
    metrics = evaluate_detections(pairs, nearest_only=not args.all_in_tolerance)
    metrics["recordings"] = len(pairs)
    print(json.dumps(metrics) if args.json else format_metrics(metrics))
    return 0
