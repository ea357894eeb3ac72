"""The ``--model PATH`` option shared by commands that run a detector (default: the bundled model)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from models.inference.loading import default_model
from models.inference.loading import load_model as load_model_file

if TYPE_CHECKING:  # torch types: an exported model runs without torch (the numpy engine where torch is missing)
    from models.inference.numpy_runtime import NumpyRuntime
    from models.inference.runtime import Runtime
    from models.networks.detector import SpikingYOLO


def add_model_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--model``."""
    parser.add_argument(
        "--model", type=Path, default=None,
        help="detector: a checkpoint (.pt from `spquant train`) or an exported integer model (.spq from `spquant "
             "export`); default: bundled",
    )


def load_model(args: argparse.Namespace) -> SpikingYOLO | Runtime | NumpyRuntime:
    """The detector named by ``--model`` (or the bundled one), in eval mode (a ``.spq`` on the numpy engine where
    torch cannot be imported)."""
    return load_model_file(args.model if args.model is not None else default_model())
