"""The ``--model PATH`` option shared by commands that run a detector (default: the bundled model)."""

from __future__ import annotations

import argparse
from pathlib import Path

from models.bundled import default_model_path
from models.checkpoint import load_detector
from models.detector import SpikingYOLO


def add_model_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--model``."""
    parser.add_argument(
        "--model", type=Path, default=None, help="detector checkpoint (.pt from `spquant train`); default: bundled"
    )


def load_model(args: argparse.Namespace) -> SpikingYOLO:
    """The detector named by ``--model`` (or the bundled one), in eval mode."""
    return load_detector(args.model if args.model is not None else default_model_path())
