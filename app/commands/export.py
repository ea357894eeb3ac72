"""``spquant export [--model PATH] --out MODEL.spq [--onnx M.onnx] [--nir M.nir]``: the integer-only model for the
runtime, service and edge, and the spiking part as a NIR graph for neuromorphic simulators and hardware.

BN, weight scales and the learnable thresholds are folded into integer weights (stored packed at their bit width)
and per-channel fixed-point (multiplier, shift) scales; membranes run as int8 codes. The file is self-describing
(config, class names, checksum) and is accepted by ``--model`` of ``predict``, ``eval`` and ``serve``. ``--onnx`` also
writes the single step ``(x, *state) -> (y, *state)`` as ONNX (needs the ``onnx`` package) for edge runtimes.
``--nir`` writes the convs (BN folded), LIF neurons, residual sums and the FPN (lateral convs, upsampling, sums) of a
checkpoint as a NIR graph (needs the ``nir`` extra), one time step per call; the Detect head is left out, the outputs
are the FPN's spikes, and the quantization (weight bits, membrane grid) is in its metadata (NIR has no field for it:
only the FP32 baseline runs identically in a NIR consumer). With ``--nir`` alone, ``--out`` may be omitted.
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
    parser.add_argument("--out", type=Path, default=None, help="output file (.spq); required unless --nir is given")
    parser.add_argument("--onnx", type=Path, default=None, help="also write the single step as ONNX here (.onnx)")
    parser.add_argument("--nir", type=Path, default=None,
                        help="write the spiking part (no head) as a NIR graph here (.nir; needs pip 'nir')")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Fold, write, reload and report sizes."""
    if args.out is None and args.nir is None:
        raise ValueError("give --out MODEL.spq, --nir MODEL.nir, or both")
    if args.onnx is not None and args.out is None:
        raise ValueError("--onnx exports the integer model: give --out MODEL.spq too")
    model = load_model(args)
    if isinstance(model, Runtime):
        raise ExportFormatError(f"{args.model} is already an exported integer model")
    if args.nir is not None:
        from models.inference.nir_export import export_nir

        path = export_nir(model, args.nir)
        cfg = model.config
        print(f"wrote {path}: {path.stat().st_size} bytes, NIR graph of {cfg.variant}-{cfg.scale}'s spiking part "
              f"(input [2, {cfg.padded_size[0]}, {cfg.padded_size[1]}] per time step, outputs: the 3 FPN levels' "
              "spikes; Detect head left out; quantization in metadata)")
    if args.out is None:
        return 0
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
