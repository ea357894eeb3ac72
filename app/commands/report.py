"""``spquant report [--model PATH] [--data ROOT] [--json] [--plot P.png]``: params, memory, FLOPs, SynOps, energy and
firing of a trained detector (a checkpoint: the counts are taken on its layers).

Memory: weights at their real bits (packed; the Detect head at ``head_bits``) and the per-stream membrane state
(packed, int8) against the FP32 dense model of the same scale; beside it the shipped ``.spq`` file and what the
torch-free runtime holds, measured on a temporary export. FLOPs per window with the SpQuant-SNN accounting: the
headline counts the work the runtimes execute (conv over kept channels at every position + membrane updates over
non-zero states); the conv positions with a silent receptive field, which event-driven hardware could skip, are a
separate ceiling. Firing rates and SynOps are measured by streaming recordings through the
model (the bundled sample by default, or ``--data ROOT``'s split). Energy per window: SynOps of convs reading spikes
× E_AC (0.9 pJ) plus MACs of the convs reading event counts (the first) or firing rates (the head) × E_MAC (4.6 pJ),
32-bit float at 45 nm (Horowitz, ISSCC 2014), against the dense FP32 network's every MAC × E_MAC. The plot is drawn
only with ``--plot PATH``.
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
    parser.add_argument("--plot", type=Path, default=None,
                        help="write a PNG of per-layer firing rates, kept channels and energy here (default: no plot; "
                             "'none' is accepted and also draws none)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Measure and print the report."""
    from app.commands.model_option import load_model
    from data.gen1 import list_recordings
    from models.compress.accounting import model_report

    model = load_model(args)
    if not hasattr(model, "backbone"):  # an exported integer model: its layers carry no counting hooks
        raise ValueError(f"{args.model}: an exported integer model; `spquant report` counts FLOPs and firing on the "
                         "trained layers, so give the checkpoint (.pt) it was exported from (the report measures the "
                         "shipped file on a fresh export of it)")
    recordings = [r.events for r in list_recordings(args.data, args.split)] if args.data else [SAMPLE]
    report = model_report(model, recordings, args.windows, args.tile, progress=not args.json)
    report["measured_on"] = str(args.data / args.split) if args.data else str(SAMPLE)
    if args.plot is not None and str(args.plot) != "none":
        plot_report(report, args.plot)
        report["plot"] = str(args.plot)
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def format_report(report: dict[str, Any]) -> str:
    """Human-readable report: summary lines, then one row per layer."""
    kb = 1e3
    m = report["model"]
    head = "FP32" if m["head_bits"] == 32 else f"{m['head_bits']}-bit"
    lines = [
        f"model: {m['variant']}-{m['scale']}{' (pruned)' if m['pruned'] else ''}, input {m['input'][0]}x"
        f"{m['input'][1]}, T={m['bins']}, weights {m['weight_bits']}-bit (first layer {m['first_layer_bits']}, "
        f"head {head}); measured on {report['windows']} windows of {report['measured_on']}",
        f"params          {report['params']:>12,}   (dense {report['params_dense']:,})",
        f"weights         {report['weight_bytes'] / kb:>10.1f} kB   packed at their bits "
        f"(FP32 dense {report['fp32_weight_bytes'] / kb:.1f} kB)",
        f"state / stream  {report['state_bytes'] / kb:>10.1f} kB   packed "
        f"(int8 {report['state_bytes_int8'] / kb:.1f} kB, FP32 dense {report['fp32_state_bytes'] / kb:.1f} kB)",
        f"memory          {report['memory_bytes'] / kb:>10.1f} kB   "
        f"{report['memory_reduction']:.2f}x less than FP32 dense (packed weights + packed state)",
        *format_deployed(report),
        f"FLOPs / window  {report['flops_executed'] / 1e6:>10.2f} M    executed: {report['flops_reduction']:.2f}x less "
        f"than dense {report['flops_dense'] / 1e6:.2f} M ({report['flops_reduction_channels']:.2f}x from channels: "
        f"{report['flops_pruned'] / 1e6:.2f} M at kept widths)",
        f"  event-driven  {report['flops_effective'] / 1e6:>10.2f} M    {report['flops_reduction_event_driven']:.2f}x "
        f"ceiling: also skipping conv positions with a silent receptive field (tile {report['tile']}), as "
        "event-driven hardware could; not credited to the runtimes' dense convs",
        *format_gates(report),
        f"SynOps / window {report['synops'] / 1e6:>10.2f} M    (spiking layers; head FLOPs "
        f"{report['head_flops_executed'] / 1e6:.2f} M)",
        *format_energy(report),
        "",
        f"{'layer':34s} {'kind':8s} {'channels':>9s} {'rate':>6s} {'active':>7s} {'MFLOPs':>8s} {'dense':>8s} "
        f"{'op':>4s} {'uJ':>8s}",
    ]
    for row in report["layers"]:
        rate = f"{row['firing_rate']:.3f}" if "firing_rate" in row else ""
        lines.append(
            f"{row['name']:34s} {row['kind']:8s} {row['channels']:>4d}/{row['channels_dense']:<4d} {rate:>6s} "
            f"{row['active_fraction']:>7.3f} {row['flops_executed'] / 1e6:>8.3f} {row['flops_dense'] / 1e6:>8.3f} "
            f"{row['energy_op'].replace('none', ''):>4s} {row['energy_uj']:>8.4f}"
        )
    lines.append("(MFLOPs: executed, convs at every position and membranes at non-zero states; active: share of a "
                 "conv's positions with a non-zero input, or of a membrane's non-zero states)")
    if "plot" in report:
        lines.append(f"\nplot: {report['plot']}")
    return "\n".join(lines)


def format_gates(report: dict[str, Any]) -> list[str]:
    """The channel-gate lines (none for a model without gates; reports written before gates had no such keys)."""
    gates = report.get("gates") or {}
    if not gates:
        return []
    kept = ", ".join(f"{name.removeprefix('backbone.')} {share:.2f}" for name, share in gates.items())
    return [f"  channel gates {report['flops_predictor'] / 1e6:>10.3f} M    predictors (counted above); kept share "
            f"per window: {kept}"]


def format_deployed(report: dict[str, Any]) -> list[str]:
    """The shipped-file and resident lines (or why there are none)."""
    kb = 1e3
    if report["shipped_bytes"] is None:
        return [f"shipped         no integer export ({report['export_error']})"]
    return [
        f"shipped .spq    {report['shipped_bytes'] / kb:>10.1f} kB   (header {report['shipped_header_bytes'] / kb:.1f} "
        f"kB); with the packed state {report['memory_reduction_shipped']:.2f}x less than FP32 dense",
        f"resident        {report['resident_model_bytes'] / kb:>10.1f} kB   torch-free runtime after loading, plus "
        f"{report['resident_state_bytes_per_stream'] / kb:.1f} kB of state per stream (int8)",
    ]


def format_energy(report: dict[str, Any]) -> list[str]:
    """The energy lines: per-window estimate, the FP32 dense reference, the constants, their source and what integer
    units would change."""
    c = report["energy_constants"]
    h = c["horowitz_pj"]
    return [
        f"energy / window {report['energy_uj_per_window']:>10.3f} uJ   FP32 dense "
        f"{report['energy_uj_per_window_fp32_dense']:.3f} uJ; {report['energy_reduction']:.2f}x less",
        f"  E_MAC {c['e_mac_pj']} pJ, E_AC {c['e_ac_pj']} pJ (32-bit float, 45 nm; {c['source']}): SynOps x E_AC for "
        "convs reading spikes, MACs x E_MAC for the first conv (event counts) and the head (rates); membrane "
        "updates and memory traffic not counted",
        f"  on integer units (same paper: int8 add {h['int8_add']}, int32 add {h['int32_add']}, int8 mult "
        f"{h['int8_mult']}, int32 mult {h['int32_mult']} pJ; fp32 add {h['fp32_add']}, mult {h['fp32_mult']} pJ): "
        f"int8 MAC {c['int_e_mac_pj']:.2f} pJ, int32 AC {c['int_e_ac_pj']} pJ -> "
        f"{report['energy_uj_per_window_int']:.3f} uJ / window",
    ]


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Four rows: firing rate per spiking layer; kept vs unpruned width per channel group; energy per layer (with the
    total beside the dense FP32 reference); FLOPs (dense, executed, event-driven) and memory (FP32 dense, packed,
    shipped) per window and stream."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    neurons = [row for row in report["layers"] if row["kind"] == "membrane"]
    groups = report["channels"]
    fig = plt.figure(figsize=(11, 15))
    grid = fig.add_gridspec(4, 5)
    top, bottom = fig.add_subplot(grid[0, :]), fig.add_subplot(grid[1, :])
    energy, totals = fig.add_subplot(grid[2, :4]), fig.add_subplot(grid[2, 4])
    flops, memory = fig.add_subplot(grid[3, :2]), fig.add_subplot(grid[3, 3:])
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
    convs = [row for row in report["layers"] if row["energy_op"] != "none"]
    colors = ["tab:green" if row["energy_op"] == "AC" else "tab:red" for row in convs]
    energy.bar(range(len(convs)), [row["energy_uj"] for row in convs], color=colors)
    energy.set_xticks(range(len(convs)), [row["name"].replace("backbone.", "") for row in convs], rotation=60,
                      ha="right", fontsize=6)
    energy.set(ylabel="uJ per window", title="energy per conv (green: SynOps x 0.9 pJ, red: MACs x 4.6 pJ)")
    totals.bar([0, 1], [report["energy_uj_per_window"], report["energy_uj_per_window_fp32_dense"]],
               color=["tab:blue", "lightgray"])
    totals.set_xticks([0, 1], ["this model", "FP32 dense"], rotation=30, ha="right", fontsize=8)
    totals.set(title=f"{report['energy_reduction']:.1f}x less")
    _bars(flops, {"FP32 dense": report["flops_dense"], "executed": report["flops_executed"],
                  "event-driven\n(ceiling)": report["flops_effective"]}, 1e6, "MFLOPs per window",
          f"FLOPs: {report['flops_reduction']:.2f}x executed, {report['flops_reduction_event_driven']:.2f}x ceiling")
    sizes = {"FP32 dense": report["fp32_memory_bytes"], "packed": report["memory_bytes"]}
    if report["shipped_bytes"] is not None:
        sizes["shipped .spq\n+ state"] = report["shipped_bytes"] + report["state_bytes"]
    shipped = report["memory_reduction_shipped"]
    title = f"memory: {report['memory_reduction']:.1f}x packed"
    title += "" if shipped is None else f", {shipped:.1f}x shipped"
    _bars(memory, sizes, 1e3, "kB (weights + one stream's state)", title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _bars(axes: Any, values: dict[str, float], unit: float, ylabel: str, title: str) -> None:
    """One bar per entry of ``values`` (divided by ``unit``) with its value on top, the first grey: the reference."""
    bars = axes.bar(range(len(values)), [v / unit for v in values.values()],
                    color=["lightgray"] + ["tab:blue"] * (len(values) - 1))
    axes.bar_label(bars, fmt="%.1f", fontsize=8)
    axes.set_xticks(range(len(values)), list(values), fontsize=8)
    axes.set(ylabel=ylabel, title=title)
