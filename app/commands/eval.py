"""``spquant eval [--model PATH] --data ROOT --split val|test [--json]``: Prophesee-protocol AP on a dataset split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from app.commands.model_option import add_model_option, load_model
from app.commands.score import format_metrics
from data.formats.labels import write_labels


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``eval``."""
    parser = subparsers.add_parser(
        "eval",
        help="stream every recording of a split through the detector and score it (Prophesee protocol)",
        description=__doc__,
    )
    add_model_option(parser)
    parser.add_argument("--data", type=Path, required=True, help="Gen1-layout root (train/ val/ test/)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--max-recordings", type=int, default=0, help="evaluate only the first N recordings")
    parser.add_argument("--save-dir", type=Path, default=None, help="also write each recording's detections here")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the metrics."""
    from app.evaluator import evaluate_split

    model = load_model(args)
    metrics, results = evaluate_split(model, args.data, args.split, args.max_recordings, progress=not args.json)
    if args.save_dir is not None:
        args.save_dir.mkdir(parents=True, exist_ok=True)
        for result in results:
            write_labels(args.save_dir / f"{result.name}_bbox.npy", result.detections)
    metrics["model"] = {"variant": model.config.variant, "scale": model.config.scale}
    print(json.dumps(metrics) if args.json else format_metrics(metrics))
    return 0
