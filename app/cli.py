"""The ``spquant`` command line: one subcommand per module in :mod:`app.commands`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import import_module

# Each module defines `add_parser(subparsers)` (which sets `func` on its parser) and is listed here once.
COMMAND_MODULES = ("info", "synth", "show", "train", "eval", "predict", "score", "serve", "stream", "export", "prune",
                   "report")
# top-level modules of the `serve` extra (everything else a command may lack comes with `train`)
_SERVE_MODULES = frozenset({"fastapi", "uvicorn", "starlette", "websockets", "multipart", "prometheus_client",
                            "pydantic_settings", "fastapi_offline"})


def build_parser(commands: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    """The top-level parser with ``commands`` (default: every subcommand) registered."""
    parser = argparse.ArgumentParser(
        prog="spquant", description="Event-camera object detection with quantized, pruned spiking networks."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in commands:
        try:
            module = import_module(f"app.commands.{name}")
        except ImportError as exc:  # a slim install (e.g. serving only) lacks what this command needs
            _add_missing(subparsers, name, exc)
        else:
            module.add_parser(subparsers)
    return parser


def _missing(exc: ImportError) -> str:
    """What a command lacks in a slim install, and how to get it."""
    extra = "serve" if (exc.name or "").split(".")[0] in _SERVE_MODULES else "train"
    return f"needs {exc.name or exc}, which this install lacks (pip install 'spquant[{extra}]')"


def _add_missing(subparsers: argparse._SubParsersAction, name: str, exc: ImportError) -> None:
    """``name`` listed as unavailable; running it says which package is missing and how to install it."""
    message = _missing(exc)
    parser = subparsers.add_parser(name, help=f"(unavailable: {message})", add_help=False)
    parser.add_argument("rest", nargs=argparse.REMAINDER)

    def unavailable(args: argparse.Namespace) -> int:
        raise ValueError(message)

    parser.set_defaults(func=unavailable)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (2 for bad input, never a traceback for user errors)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # Only the named command's module is imported: some import torch at module level, and `spquant serve` of an
    # exported model must run where torch is missing (it is faster to start, too). Help and errors list them all.
    named = argv[0] if argv and argv[0] in COMMAND_MODULES else None
    if named is not None:
        try:
            import_module(f"app.commands.{named}")
        except ImportError as exc:
            print(f"spquant {named}: error: {_missing(exc)}", file=sys.stderr)
            return 2
    args = build_parser((named,) if named else COMMAND_MODULES).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as exc:  # a slim install: the command imports what it needs when it runs
        print(f"spquant {args.command}: error: {_missing(exc)}", file=sys.stderr)
        return 2
    # Data, config and checkpoint errors are ValueErrors with a message meant for the user.
    except (ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"spquant {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
