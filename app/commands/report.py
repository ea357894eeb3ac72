"""``spquant report [--model PATH] [--data ROOT] [--json]``: params, memory, FLOPs, SynOps and firing of a detector.

Memory: weights at their configured bits (packed) and the per-stream membrane state (packed, int8) against the FP32
dense model of the same scale. FLOPs per window with the SpQuant-SNN accounting (conv over kept channels and active
positions + membrane updates over non-zero states) against the dense count; firing rates and SynOps are measured by
streaming recordings through the model (the bundled sample by default, or ``--data ROOT``'s split).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import data
from app.commands.model_option import add_model_option

SAMPLE = Path(data.__file__).resolve().parent / "samples" / "street_td.dat"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``report``."""
    parser = subparsers.add_parser(
        "report", help="params, memory, FLOPs and firing rates of a detector (paper accounting)", description=__doc__
    )
    add_model_option(parser)
    parser.add_argument("--data", type=Path, default=None,
                        help="Gen1-layout root to measure on (default: the bundled sample recording)")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"), help="split of --data")
    parser.add_argument("--windows", type=int, default=200, help="windows measured (0 = every window)")
    parser.add_argument("--tile", type=int, default=1, help="spatial gating tile size in output positions")
    parser.add_argument("--plot", type=Path, default=Path("report.png"),
                        help="PNG of per-layer firing rates and kept channels ('none' to skip)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Measure and print the report."""
    from app.commands.model_option import load_model
    from data.gen1 import list_recordings
    from models.compress.accounting import model_report

    model = load_model(args)
    recordings = [r.events for r in list_recordings(args.data, args.split)] if args.data else [SAMPLE]
    report = model_report(model, recordings, args.windows, args.tile, progress=not args.json)
    report["measured_on"] = str(args.data / args.split) if args.data else str(SAMPLE)
    if str(args.plot) != "none":
        plot_report(report, args.plot)
        report["plot"] = str(args.plot)
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def format_report(report: dict[str, Any]) -> str:
    """Human-readable report: summary lines, then one row per layer."""
    kb = 1e3
    m = report["model"]
    lines = [
        f"model: {m['variant']}-{m['scale']}{' (pruned)' if m['pruned'] else ''}, input {m['input'][0]}x"
        f"{m['input'][1]}, T={m['bins']}; measured on {report['windows']} windows of {report['measured_on']}",
        f"params          {report['params']:>12,}   (dense {report['params_dense']:,})",
        f"weights         {report['weight_bytes'] / kb:>10.1f} kB   "
        f"(FP32 dense {report['fp32_weight_bytes'] / kb:.1f} kB)",
        f"state / stream  {report['state_bytes'] / kb:>10.1f} kB   (int8 {report['state_bytes_int8'] / kb:.1f} kB, "
        f"FP32 dense {report['fp32_state_bytes'] / kb:.1f} kB)",
        f"memory          {report['memory_bytes'] / kb:>10.1f} kB   "
        f"{report['memory_reduction']:.2f}x less than FP32 dense",
        f"FLOPs / window  {report['flops_effective'] / 1e6:>10.2f} M    dense {report['flops_dense'] / 1e6:.2f} M, "
        f"kept channels {report['flops_pruned'] / 1e6:.2f} M; {report['flops_reduction']:.2f}x less than dense "
        f"({report['flops_reduction_channels']:.2f}x from channels)",
        f"SynOps / window {report['synops'] / 1e6:>10.2f} M    (spiking layers; head FLOPs "
        f"{report['head_flops_effective'] / 1e6:.2f} M)",
        "",
        f"{'layer':34s} {'kind':8s} {'channels':>9s} {'rate':>6s} {'active':>7s} {'MFLOPs':>8s} {'dense':>8s}",
    ]
    for row in report["layers"]:
        rate = f"{row['firing_rate']:.3f}" if "firing_rate" in row else ""
        lines.append(
            f"{row['name']:34s} {row['kind']:8s} {row['channels']:>4d}/{row['channels_dense']:<4d} {rate:>6s} "
            f"{row['active_fraction']:>7.3f} {row['flops_effective'] / 1e6:>8.3f} {row['flops_dense'] / 1e6:>8.3f}"
        )
    if "plot" in report:
        lines.append(f"\nplot: {report['plot']}")
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Two panels: firing rate per spiking layer, and kept vs unpruned width per channel group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    neurons = [row for row in report["layers"] if row["kind"] == "membrane"]
    groups = report["channels"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8))
    top.bar(range(len(neurons)), [row["firing_rate"] for row in neurons], color="tab:orange")
    top.set_xticks(range(len(neurons)), [row["name"].replace("backbone.", "") for row in neurons], rotation=60,
                   ha="right", fontsize=7)
    top.set(ylabel="spikes per neuron and step", title="firing rate per spiking layer")
    names = list(groups)
    bottom.bar(range(len(names)), [groups[n][1] for n in names], color="lightgray", label="unpruned")
    bottom.bar(range(len(names)), [groups[n][0] for n in names], color="tab:blue", label="kept")
    bottom.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    bottom.set(ylabel="channels", title="channels kept per group")
    bottom.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
