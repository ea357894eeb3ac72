"""``spquant prune [--model PATH] --data ROOT (--target-flops-reduction R | --target-mflops M) --out PATH``.

Channel pruning with the membrane-potential prior: calibrate on the training split, rank channels globally toward the
FLOPs target, fine-tune with gradually growing masks, remove the channels physically and save a smaller checkpoint
that loads everywhere an unpruned one does. ``--channel-gates`` adds the per-window channel gates too (trained in the
fine-tune with their loss; pruning slices them with their convs), so static and dynamic channel sparsity combine.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import sys
from pathlib import Path

from app.commands.model_option import add_model_option


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``prune``."""
    parser = subparsers.add_parser(
        "prune", help="prune channels toward a FLOPs target, fine-tune, and save a smaller model", description=__doc__
    )
    add_model_option(parser)
    parser.add_argument("--data", type=Path, required=True, help="Gen1-layout root: train/ calibrates and fine-tunes")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-flops-reduction", type=float, metavar="R",
                        help="dense FLOPs / executed FLOPs to reach (e.g. 5)")
    target.add_argument("--target-mflops", type=float, metavar="M",
                        help="executed MFLOPs per window to reach (e.g. a smaller model's, from `spquant report`)")
    parser.add_argument("--finetune-epochs", type=int, default=3, metavar="E", help="0 = one-shot removal")
    parser.add_argument("--out", type=Path, required=True, help="where to write the pruned checkpoint (.pt)")
    parser.add_argument("--head-bits", type=int, default=None,
                        help="fake-quantize the Detect head at these bits (default: as the model has it)")
    parser.add_argument("--calibration-windows", type=int, default=400, help="windows scored for channel importance")
    parser.add_argument("--floor", type=float, default=0.25, help="keep at least this share of every channel group")
    parser.add_argument("--cost-weight", type=float, default=0.0,
                        help="0 ranks by importance only; 1 by importance per FLOP saved")
    parser.add_argument("--ramp", type=float, default=0.2, help="share of fine-tuning steps over which masks grow")
    parser.add_argument("--lr", type=float, default=0.002, help="fine-tuning peak learning rate")
    parser.add_argument("--distill", type=float, default=0.0, metavar="GAIN",
                        help="distil the unpruned model's head outputs into the pruned one with this gain (0 = off)")
    parser.add_argument("--channel-gates", action="store_true",
                        help="add per-window channel gates (the paper's masks) and train them in the fine-tune")
    parser.add_argument("--mask-mass", type=float, default=0.85,
                        help="gate targets keep the channels holding this share of a window's activation")
    parser.add_argument("--mask-budget", type=float, default=1.0,
                        help="FLOPs-weighted share of gated channels kept above which the budget term applies")
    parser.add_argument("--mask-gain", type=float, default=1.0, help="weight of the gate-target loss")
    parser.add_argument("--activity", type=float, default=0.0, metavar="GAIN",
                        help="add GAIN x the mean firing rate to the fine-tuning loss (sparser spikes; 0 = off)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--eval-split", default="val", choices=("train", "val", "test", "none"),
                        help="split scored after pruning (none: skip)")
    parser.add_argument("--project", default="runs/prune", help="parent folder of the fine-tuning run folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Prune, save, measure and print."""
    import torch

    from app.evaluator import evaluate_split
    from app.pruning import PruneSettings, prune_detector
    from data.gen1 import list_recordings
    from models.compress.accounting import model_report
    from models.inference.bundled import default_model_path
    from models.networks.checkpoint import load_detector, read_checkpoint, save_checkpoint

    if args.out.suffix != ".pt":
        raise ValueError(f"--out must name a .pt checkpoint, got {args.out}")
    source = args.model if args.model is not None else default_model_path()
    payload = read_checkpoint(source)
    model = load_detector(source)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    settings = PruneSettings(
        target_flops_reduction=args.target_flops_reduction,
        target_mflops=args.target_mflops,
        finetune_epochs=args.finetune_epochs,
        calibration_windows=args.calibration_windows,
        floor=args.floor,
        cost_weight=args.cost_weight,
        ramp=args.ramp,
        lr=args.lr,
        head_bits=args.head_bits,
        distill_gain=args.distill,
        channel_gates=args.channel_gates,
        mask_mass=args.mask_mass,
        mask_budget=args.mask_budget,
        mask_gain=args.mask_gain,
        activity_gain=args.activity,
        threads=args.threads,
        project=args.project,
        name=f"{args.out.stem}-finetune",
    )
    progress = not (args.quiet or args.json)
    # the trainer prints a line per epoch; keep stdout one JSON object under --json
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        result = prune_detector(model, args.data, settings, payload.get("train_config"), progress)
    # provenance: what the pruned model started from (its own training config and file hash) and how it was pruned
    summary = {"source": str(source), "source_sha256": hashlib.sha256(Path(source).read_bytes()).hexdigest(),
               "source_train_config": payload.get("train_config"), "settings": dataclasses.asdict(settings),
               **result.summary()}
    report = model_report(result.model, [r.events for r in list_recordings(args.data, "val")], 200,
                          progress=progress)
    summary["measured"] = {k: report[k] for k in ("params", "weight_bytes", "state_bytes", "memory_reduction",
                                                  "flops_dense", "flops_executed", "flops_reduction",
                                                  "flops_reduction_event_driven")}
    if args.eval_split != "none":
        metrics, _ = evaluate_split(result.model, args.data, args.eval_split, progress=progress)
        summary["metrics"] = {"split": args.eval_split, **{k: metrics[k] for k in ("AP", "AP50", "AP75")}}
    save_checkpoint(args.out, result.model, prune=summary,
                    train_config=result.train_config or payload.get("train_config"))
    summary["out"] = str(args.out)
    if args.json:
        print(json.dumps(summary))
    else:
        measured = summary["measured"]
        print(f"pruned {summary['removed_channels']} channels: params {measured['params']}, "
              f"executed FLOPs {measured['flops_executed'] / 1e6:.1f} M/window "
              f"({measured['flops_reduction']:.2f}x less than dense; target {summary['target_flops_reduction']:.2f}x, "
              f"{summary['target_mflops']:.1f} M), "
              f"memory {measured['memory_reduction']:.1f}x less than FP32")
        if "metrics" in summary:
            m = summary["metrics"]
            print(f"{m['split']}: AP {m['AP']:.4f}  AP50 {m['AP50']:.4f}  AP75 {m['AP75']:.4f}")
        print(f"saved {args.out}" + (f"  (fine-tuning run: {result.run_dir})" if result.run_dir else ""))
    return 0
