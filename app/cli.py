"""The ``spquant`` command line: one subcommand per module in :mod:`app.commands`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import import_module

# Each module defines `add_parser(subparsers)` (which sets `func` on its parser) and is listed here once.
COMMAND_MODULES = ("info", "synth", "show", "train", "eval", "predict", "score", "serve", "stream", "export", "prune",
                   "report")


def build_parser(commands: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    """The top-level parser with ``commands`` (default: every subcommand) registered."""
    parser = argparse.ArgumentParser(
        prog="spquant", description="Event-camera object detection with quantized, pruned spiking networks."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in commands:
        import_module(f"app.commands.{name}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (2 for bad input, never a traceback for user errors)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # Only the named command's module is imported: some import torch at module level, and `spquant serve` of an
    # exported model must run where torch is missing (it is faster to start, too). Help and errors list them all.
    named = argv[0] if argv and argv[0] in COMMAND_MODULES else None
    args = build_parser((named,) if named else COMMAND_MODULES).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    # Data, config and checkpoint errors are ValueErrors with a message meant for the user.
    except (ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"spquant {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
