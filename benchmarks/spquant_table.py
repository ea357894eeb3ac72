"""The SpQuant-SNN paper's table on our data: FP32 dense baseline, quantized, quantized + pruned.

For each model: AP and AP50 on a split (Prophesee protocol, every recording streamed with its state); memory per
stream, ideal (weights packed at their bits, the Detect head at ``head_bits``, + the packed membrane state) and
shipped (the exported ``.spq`` file + the packed state); executed FLOPs per window with the paper's accounting (kept
channels at every position + membrane updates of non-zero states: what the runtimes run), and beside them the
event-driven ceiling (also skipping conv positions with a silent receptive field, as event-driven hardware could).
Every reduction is against the FP32 dense baseline: the first model of the same scale (so one run can hold several
scales, each against its own baseline). FLOPs are measured on the same split's recordings. ``--plot`` draws the
accuracy / executed-FLOPs trade-off with the paper's target region.

Run (the synthetic dataset of the README)::

    python benchmarks/spquant_table.py --data datasets/synth-v1 --split test \\
        --model baseline=models/weights/baseline-n.pt --model quantized=models/weights/spquant-n.pt \\
        --model "quantized + pruned=models/weights/spquant-n-pruned.pt"

writes ``benchmarks/results/spquant_table.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torch.nn.functional as F

from app.evaluator import evaluate_split
from data.gen1 import list_recordings
from models.compress.accounting import _active_positions, dense_reference, model_report, static_counts
from models.inference.stream import run_recordings
from models.networks.checkpoint import load_detector
from models.networks.neuron import IntegerLIF

RESULTS = Path(__file__).resolve().parent / "results" / "spquant_table.json"
WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "weights"
DEFAULT_MODELS = (
    f"baseline={WEIGHTS / 'baseline-n.pt'}",
    f"quantized={WEIGHTS / 'spquant-n.pt'}",
    f"quantized + pruned={WEIGHTS / 'spquant-n-pruned.pt'}",
)


def measure(name: str, path: Path, data: Path, split: str, windows: int) -> dict[str, Any]:
    """AP, memory and FLOPs of one checkpoint."""
    model = load_detector(path)
    start = time.perf_counter()
    metrics, _ = evaluate_split(model, data, split, progress=False)
    seconds = time.perf_counter() - start
    recordings = [r.events for r in list_recordings(data, split)]
    report = model_report(model, recordings, windows)
    start = time.perf_counter()
    timed = run_recordings(model, recordings[:1], 200)  # CPU latency: one stream, no counters attached
    ms_per_window = 1e3 * (time.perf_counter() - start) / timed
    cfg = model.config
    return {
        "name": name,
        "path": str(path),
        "variant": cfg.variant,
        "scale": cfg.scale,
        "weight_bits": cfg.weight_bits if cfg.quantized else 32,
        "head_bits": cfg.head_bits,
        "membrane": "ternary" if cfg.quantized else "fp32",
        "pruned": cfg.pruned,
        "AP": metrics["AP"],
        "AP50": metrics["AP50"],
        "AP75": metrics["AP75"],
        "params": report["params"],
        "weight_bytes": report["weight_bytes"],
        "state_bytes": report["state_bytes"],
        "memory_bytes": report["memory_bytes"],
        "shipped_bytes": report["shipped_bytes"],
        "resident_model_bytes": report["resident_model_bytes"],
        "flops_executed": report["flops_executed"],
        "flops_event_driven": report["flops_effective"],
        "flops_dense": report["flops_dense"],
        "synops": report["synops"],
        "ms_per_window": round(ms_per_window, 2),
        "eval_seconds": round(seconds, 1),
    }


def gated_conv(x: torch.Tensor, conv: torch.nn.Conv2d, tile: int) -> torch.Tensor:
    """``conv(x)`` computed only at the active output positions (others are 0): gather patches, one matmul."""
    n, _, h, w = x.shape
    kh, kw = conv.kernel_size
    (sh, sw), (ph, pw) = conv.stride, conv.padding
    out_h, out_w = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    active = _active_positions(x, conv, (out_h, out_w), tile).nonzero()  # [P, 3]: sample, row, column
    padded = F.pad(x, (pw, pw, ph, ph))
    rows, cols = active[:, 1] * sh, active[:, 2] * sw
    patches = torch.stack([padded[active[:, 0], :, rows + dy, cols + dx] for dy in range(kh) for dx in range(kw)],
                          -1)  # [P, C, kh·kw]
    weight = conv.quantized_weight() if hasattr(conv, "quantized_weight") else conv.weight
    values = patches.flatten(1) @ weight.flatten(1).T  # [P, C_out]
    out = x.new_zeros(n, out_h, out_w, conv.out_channels)
    out[active[:, 0], active[:, 1], active[:, 2]] = values
    return out.permute(0, 3, 1, 2)


def gating_on_cpu(path: Path, data: Path, split: str, windows: int, tile: int) -> list[dict[str, Any]]:
    """Dense vs tile-gated time of the convs whose inputs are sparse enough to gate (measured inputs, same results)."""
    model = load_detector(path)
    convs = {"backbone.stem1.conv_bn.conv": None, "backbone.stem2.conv": None, "backbone.stages.0.0.conv1.conv": None}
    inputs: dict[str, list[torch.Tensor]] = {name: [] for name in convs}
    handles = []
    for name, module in model.named_modules():
        if name in convs:
            convs[name] = module
            handles.append(module.register_forward_hook(
                lambda m, args, out, name=name: inputs[name].append(args[0].detach().clone())))
    run_recordings(model, [r.events for r in list_recordings(data, split)][:1], windows)
    for handle in handles:
        handle.remove()
    rows = []
    with torch.inference_mode():
        for name, conv in convs.items():
            dense_s = gated_s = 0.0
            active = total = 0.0
            for x in inputs[name]:  # [T, C, H, W] per window (batch 1)
                start = time.perf_counter()
                dense = conv(x)
                dense_s += time.perf_counter() - start
                start = time.perf_counter()
                gated = gated_conv(x, conv, tile)
                gated_s += time.perf_counter() - start
                mask = _active_positions(x, conv, dense.shape[2:], tile).unsqueeze(1).bool()
                if not torch.allclose(gated, dense * mask, atol=1e-4):
                    raise AssertionError(f"{name}: gated conv differs from the dense conv at active positions")
                active, total = active + float(mask.sum()), total + mask.numel()
            rows.append({"layer": name, "tile": tile, "active_fraction": active / total,
                         "dense_ms_per_window": 1e3 * dense_s / len(inputs[name]),
                         "gated_ms_per_window": 1e3 * gated_s / len(inputs[name])})
    return rows


def gating_ceiling(path: Path, data: Path, split: str, windows: int) -> dict[str, Any]:
    """The most FLOPs spatial gating alone could save on this data, for the dense model of ``path``'s scale.

    Every layer is assumed active only in the output tiles that hold an input event (the spiking layers per time bin,
    the head over the window): no growth of activity through receptive fields and no spikes anywhere else, so real
    gating can only do worse. The event footprint at each stride is measured on the split's recordings.
    """
    model = load_detector(path)
    dense = dense_reference(model.config)
    height = model.config.padded_size[0]
    strides: dict[str, int] = {}

    def stride_of(name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], out: Any) -> None:
            strides[name] = height // (out[0] if isinstance(out, tuple) else out).shape[-2]  # LIF: (spikes, state)

        return hook

    # the layers static_counts counts: every conv and every neuron
    handles = [module.register_forward_hook(stride_of(name)) for name, module in dense.named_modules()
               if isinstance(module, torch.nn.Conv2d | IntegerLIF)]
    counts = static_counts(dense)
    for handle in handles:
        handle.remove()
    per_bin: dict[int, float] = {}
    per_window: dict[int, float] = {}
    seen = 0

    def footprint(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        nonlocal seen
        events = args[0].ne(0).any(2).float()  # [T, B, H, W]
        for stride in set(strides.values()):
            blocks = F.max_pool2d(events, stride, stride, ceil_mode=True)  # [T, B, H/s, W/s]
            per_bin[stride] = per_bin.get(stride, 0.0) + float(blocks.mean())
            per_window[stride] = per_window.get(stride, 0.0) + float(blocks.amax(0).mean())
        seen += 1

    handle = model.register_forward_pre_hook(footprint)
    run_recordings(model, [r.events for r in list_recordings(data, split)], windows)
    handle.remove()
    flops = sum(c.flops for c in counts)
    gated = sum(c.flops * (per_bin if c.spiking else per_window)[strides[c.name]] / seen for c in counts)
    return {
        "event_footprint_per_bin": {s: per_bin[s] / seen for s in sorted(per_bin)},
        "event_footprint_per_window": {s: per_window[s] / seen for s in sorted(per_window)},
        "flops_dense": flops,
        "flops_gated_ceiling": gated,
        "flops_reduction_ceiling": flops / gated,
        "windows": seen,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("datasets/synth-v1"))
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--model", action="append", default=None, metavar="NAME=PATH",
                        help="a row (repeatable; the first of each scale is its reference); default: the three "
                        "bundled models")
    parser.add_argument("--windows", type=int, default=600, help="windows measured for FLOPs (0 = all)")
    parser.add_argument("--tile", type=int, default=4, help="tile of the CPU gating check")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--plot", type=Path, default=None, metavar="PNG", help="also draw the AP / FLOPs trade-off")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for spec in args.model or DEFAULT_MODELS:
        name, sep, path = spec.partition("=")
        if not sep:
            parser.error(f"--model takes NAME=PATH, got {spec!r}")
        rows.append(measure(name, Path(path), args.data, args.split, args.windows))
        print(f"measured {name}", flush=True)
    gating = gating_on_cpu(Path(rows[-1]["path"]), args.data, args.split, 100, args.tile)
    ceiling = gating_ceiling(Path(rows[0]["path"]), args.data, args.split, args.windows)
    references: dict[str, dict[str, Any]] = {}
    for row in rows:
        reference = references.setdefault(row["scale"], row)
        row["reference"] = reference["name"]
        row["memory_reduction"] = reference["memory_bytes"] / row["memory_bytes"]
        row["memory_reduction_shipped"] = (None if row["shipped_bytes"] is None
                                           else reference["memory_bytes"] / (row["shipped_bytes"] + row["state_bytes"]))
        row["flops_reduction"] = reference["flops_dense"] / row["flops_executed"]
        row["flops_reduction_event_driven"] = reference["flops_dense"] / row["flops_event_driven"]
        row["AP_drop_points"] = 100 * (reference["AP"] - row["AP"])
    result = {
        "data": str(args.data),
        "split": args.split,
        "threads": args.threads,
        "accounting": "memory = weights packed at their bits (Detect head at head_bits; BN, thresholds, biases FP32) + "
        "one stream's membrane state packed at the grid's bits; memory shipped = the exported .spq file + the same "
        "state; FLOPs executed per window = conv MACs over the kept channels at every position + membrane updates of "
        "non-zero states (what the runtimes run); FLOPs event-driven = the same less conv positions whose receptive "
        "field is silent (a ceiling: what event-driven hardware could skip); reductions and AP drop against the FP32 "
        "dense model of the first row of the same scale",
        "rows": rows,
        "gating_cpu": gating,
        "gating_ceiling": ceiling,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(format_table(rows))
    for g in gating:
        print(f"tile gating of {g['layer']} (last model, tile {g['tile']}): {g['active_fraction']:.0%} active, "
              f"dense {g['dense_ms_per_window']:.2f} ms vs gated {g['gated_ms_per_window']:.2f} ms per window")
    footprint = ", ".join(f"{v:.0%} at stride {k}" for k, v in ceiling["event_footprint_per_bin"].items())
    print(f"event footprint per time bin: {footprint}; spatial gating alone could cut the dense FLOPs "
          f"{ceiling['flops_reduction_ceiling']:.2f}x at most")
    print(f"wrote {args.out}")
    if args.plot:
        plot_tradeoff(rows, args.plot)
        print(f"wrote {args.plot}")


def plot_tradeoff(rows: list[dict[str, Any]], path: Path, flops_target: float = 4.7, max_drop: float = 1.8) -> None:
    """AP change against FLOPs reduction, one series per scale, with the paper's target region shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    right = max(12.0, 1.5 * max(r["flops_reduction"] for r in rows))
    bottom = min(-4.0, -1.2 * max(r["AP_drop_points"] for r in rows))
    top = max(1.0, 0.2 * -bottom)
    ax.fill_between([flops_target, right], -max_drop, top, color="tab:green", alpha=0.15, zorder=0,
                    label=f"target: ≥{flops_target}× FLOPs, ≤{max_drop} points")
    labelled: list[tuple[float, float]] = []
    for scale in dict.fromkeys(r["scale"] for r in rows):
        series = [r for r in rows if r["scale"] == scale]
        ax.plot([r["flops_reduction"] for r in series], [-r["AP_drop_points"] for r in series], "o",
                label=f"scale {scale}")
        for r in series:
            x, y = r["flops_reduction"], -r["AP_drop_points"]
            # stack the labels of points that nearly coincide instead of printing them over each other
            near = [ly for lx, ly in labelled if abs(math.log(x / lx)) < 0.08 and abs(y - ly) < 1.0]
            shift = 10 * len(near) * (1 if near and y > max(near) else -1)
            labelled.append((x, y))
            ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(6, 4 + shift), fontsize=7)
    ax.set_xscale("log")
    ticks = [t for t in (1, 1.5, 2, 3, flops_target, 6, 8, 12, 16) if t <= right]
    ax.set_xticks(ticks, [f"{t:g}×" for t in ticks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlim(0.9, right)
    ax.set_ylim(bottom, top)
    ax.set_xlabel("executed FLOPs reduction vs the scale's FP32 dense baseline (log)")
    ax.set_ylabel("AP change (points)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the rows."""
    lines = [
        "| model | weights | head | membrane | AP | AP50 | ΔAP (points) | memory | shipped .spq | memory red. "
        "(ideal / shipped) | MFLOPs/window executed | FLOPs red. | event-driven ceiling | CPU ms/window |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = "FP32" if r["head_bits"] == 32 else f"{r['head_bits']}-bit"
        shipped = "—" if r["shipped_bytes"] is None else f"{r['shipped_bytes'] / 1e3:.1f} kB"
        shipped_red = "—" if r["memory_reduction_shipped"] is None else f"{r['memory_reduction_shipped']:.1f}x"
        lines.append(
            f"| {r['name']} | {r['weight_bits']}-bit | {head} | {r['membrane']} | {r['AP']:.3f} | {r['AP50']:.3f} | "
            f"{0.0 - round(r['AP_drop_points'], 1):+.1f} | {r['memory_bytes'] / 1e3:.1f} kB | {shipped} | "
            f"{r['memory_reduction']:.1f}x / {shipped_red} | {r['flops_executed'] / 1e6:.1f} | "
            f"{r['flops_reduction']:.2f}x | {r['flops_reduction_event_driven']:.2f}x | {r['ms_per_window']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
