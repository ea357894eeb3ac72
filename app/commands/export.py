"""``spquant export [--model PATH] --out MODEL.spq``: the integer-only model for the runtime, service and edge.

BN, weight scales and the learnable thresholds are folded into integer weights (stored packed at their bit width)
and per-channel fixed-point (multiplier, shift) scales; membranes run as int8 codes. The file is self-describing
(config, class names, checksum) and is accepted by ``--model`` of ``predict``, ``eval`` and ``serve``. ``--onnx`` also
writes the single step ``(x, *state) -> (y, *state)`` as ONNX (needs the ``onnx`` package) for edge runtimes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from app.commands.model_option import add_model_option, load_model
from models.compress.accounting import footprint
from models.inference.export import ExportFormatError, export_model
from models.inference.runtime import Runtime


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``export``."""
    parser = subparsers.add_parser("export", help="export an integer-only model (.spq)", description=__doc__)
    add_model_option(parser)
    parser.add_argument("--out", type=Path, required=True, help="output file (.spq)")
    parser.add_argument("--onnx", type=Path, default=None, help="also write the single step as ONNX here (.onnx)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Fold, write, reload and report sizes."""
    model = load_model(args)
    if isinstance(model, Runtime):
        raise ExportFormatError(f"{args.model} is already an exported integer model")
    path = export_model(model, args.out)
    runtime = Runtime.load(path)
    cfg, size = runtime.config, footprint(runtime)
    print(f"wrote {path}: {path.stat().st_size} bytes, {cfg.variant}-{cfg.scale}, {cfg.input_width}x"
          f"{cfg.input_height}, T={cfg.bins}, classes {list(cfg.class_names)}; state per stream "
          f"{size['state_bytes_per_stream']} bytes as int8 ({size['state_bytes_per_stream_packed']} packed)")
    if args.onnx is not None:
        from models.inference.onnx_step import export_onnx

        print(f"wrote {export_onnx(runtime, args.onnx)}: {args.onnx.stat().st_size} bytes")
    return 0
