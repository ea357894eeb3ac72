"""``spquant synth OUT``: a synthetic Gen1-format dataset, ``OUT/<split>/<name>_td.dat`` + ``<name>_bbox.npy``.

A simulated event camera watches a street with cars and pedestrians (see ``data/synthetic``). The same seed gives
byte-identical files; every recording of every split has its own random stream.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from data.formats.labels import GEN1_CLASSES
from data.synthetic import DIFFICULTIES, difficulty_config, write_dataset
from data.synthetic.dataset import DAT_MAX_SECONDS


def _duration(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not math.isfinite(value) or not 0 < value <= DAT_MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"duration must be > 0 and at most {DAT_MAX_SECONDS:.0f} s (32-bit µs timestamps), got {text}"
        )
    return value


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _seed(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def _splits(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(","))
    if not all(names) or any(not n.replace("_", "").replace("-", "").isalnum() for n in names):
        raise argparse.ArgumentTypeError(f"expected comma-separated split names like train,val,test; got {text!r}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"split names repeat in {text!r}")
    return names


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``synth``."""
    parser = subparsers.add_parser(
        "synth",
        help="generate a synthetic Gen1-format dataset",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out", type=Path, help="output folder (created; files in it are overwritten)")
    parser.add_argument("--recordings", type=_count, default=1, metavar="N", help="recordings per split (default 1)")
    parser.add_argument(
        "--duration",
        type=_duration,
        default=60.0,
        metavar="SECONDS",
        help="length of each recording (default 60, as in Gen1)",
    )
    parser.add_argument("--seed", type=_seed, default=0, metavar="K", help="dataset seed (default 0)")
    parser.add_argument(
        "--splits",
        type=_splits,
        default=("train", "val", "test"),
        metavar="A,B,...",
        help="splits to write (default train,val,test)",
    )
    parser.add_argument(
        "--difficulty", choices=DIFFICULTIES, default="normal", help="scene and sensor preset (default normal)"
    )
    parser.add_argument(
        "--label-rate",
        type=_positive,
        default=20.0,
        metavar="HZ",
        help="label timestamps per second (default 20; Gen1 has about 4)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the dataset and print a one-line summary per split."""
    if args.out.exists() and not args.out.is_dir():
        print(f"spquant synth: error: {args.out} exists and is not a folder", file=sys.stderr)
        return 2
    config = difficulty_config(args.difficulty, label_rate_hz=args.label_rate)
    try:
        summaries = write_dataset(
            args.out, config, args.recordings, args.duration, args.seed, args.splits, progress=not args.quiet
        )
    except OSError as exc:  # unwritable or full disk, a file where a folder should go
        print(f"spquant synth: error: cannot write to {args.out}: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        for split in args.splits:
            mine = [s for s in summaries if s.events_path.parent.name == split]
            events = sum(s.events for s in mine)
            seconds = sum(s.duration_s for s in mine)
            boxes = ", ".join(
                f"{sum(s.boxes_per_class[c] for s in mine)} {name}" for c, name in enumerate(GEN1_CLASSES)
            )
            on = sum(s.on for s in mine) / max(events, 1)
            plural = "" if len(mine) == 1 else "s"
            print(
                f"{args.out / split}: {len(mine)} recording{plural}, {events} events ({events / seconds:.3g}/s, "
                f"{on:.0%} ON), boxes: {boxes}"
            )
    return 0
