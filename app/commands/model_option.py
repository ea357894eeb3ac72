"""The ``--model PATH`` option shared by commands that run a detector (default: the bundled model)."""

from __future__ import annotations

import argparse
from pathlib import Path

from models.inference.bundled import default_model_path
from models.inference.loading import load_model as load_model_file
from models.inference.runtime import Runtime
from models.networks.detector import SpikingYOLO


def add_model_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--model``."""
    parser.add_argument(
        "--model", type=Path, default=None,
        help="detector: a checkpoint (.pt from `spquant train`) or an exported integer model (.spq from `spquant "
             "export`); default: bundled",
    )


def load_model(args: argparse.Namespace) -> SpikingYOLO | Runtime:
    """The detector named by ``--model`` (or the bundled one), in eval mode."""
    return load_model_file(args.model if args.model is not None else default_model_path())
