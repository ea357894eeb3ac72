"""``spquant train [CONFIG.yaml] [key=value ...]``: train a detector on a Gen1-layout dataset."""

from __future__ import annotations

import argparse

from app.config import build_config, parse_overrides


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train``."""
    parser = subparsers.add_parser(
        "train",
        help="train a spiking detector (keys and defaults: app/cfg/default.yaml)",
        description=__doc__
        + " Example: spquant train data=datasets/synth epochs=10 variant=baseline. Several processes or GPUs:"
        " torchrun --nproc_per_node=N -m app.cli train ... (DistributedDataParallel; gloo on CPU, nccl on GPU).",
    )
    parser.add_argument("args", nargs="*", metavar="[CONFIG.yaml] key=value", help="config file and overrides")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the config, train, print where the weights went."""
    import torch

    from app.trainer import Trainer

    config_file = None
    pairs = list(args.args)
    if pairs and "=" not in pairs[0]:
        config_file = pairs.pop(0)
    config = build_config(config_file, parse_overrides(pairs))
    trainer = Trainer(config, progress=not args.quiet)
    try:
        trainer.fit()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if trainer.is_main:
        print(f"run folder: {trainer.run_dir}  (best weights: {trainer.run_dir / 'weights' / 'best.pt'})")
    return 0
