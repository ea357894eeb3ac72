"""The SpQuant-SNN paper's table on our data, and the accuracy / cost trade-off front of every method and scale.

For each model: AP and AP50 on a split (Prophesee protocol, every recording streamed with its state); memory per
stream, ideal (weights packed at their bits, the Detect head at ``head_bits``, + the packed membrane state) and
shipped (the exported ``.spq`` file + the packed state); executed FLOPs per window with the paper's accounting (kept
channels at every position + membrane updates of non-zero states: what the runtimes run), and beside them the
event-driven ceiling (also skipping conv positions with a silent receptive field, as event-driven hardware could).
Every row carries its scale and its method, read from the checkpoint's own config (variant, weight and head bits,
pruned or not), never from the name given on the command line. Every reduction is against the FP32 dense baseline:
the first model of the same scale (so one run can hold several scales, each against its own baseline). FLOPs are
measured on the same split's recordings. ``--plot`` draws the accuracy / executed-FLOPs trade-off with the paper's
target region; ``--front`` draws the trade-off front: test AP against executed MFLOPs per window and against ideal
memory per stream, each panel with its Pareto front and the paper's target (≥ 4.7× executed FLOPs at ≤ 1.8 AP points
below the scale's baseline; ≥ 13× memory). The summary printed last (and kept in the JSON under ``front``) names the
best operating point at ≥ 4.7× executed FLOPs and what it costs in AP. ``--from`` redraws and reprints from a JSON
this script wrote, without measuring. ``--reference NAME`` measures every row against one row (a smaller scale's
baseline: scales compared at equal executed FLOPs); ``--append JSON`` adds this run's rows to an earlier run's (each
new row stamped ``measured_at``; a row of the same name is replaced).

Run (the synthetic dataset of the README)::

    python benchmarks/spquant_table.py --data datasets/synth-v1 --split test \\
        --model baseline=models/weights/baseline-n.pt --model quantized=models/weights/spquant-n.pt \\
        --model "quantized + pruned=models/weights/spquant-n-pruned.pt"

writes ``benchmarks/results/spquant_table.json`` and prints the table. The README's front is the same run over every
checkpoint with ``--out benchmarks/results/spquant_front.json --front docs/tradeoff_front.png``; ``--from
benchmarks/results/spquant_front.json --front docs/tradeoff_front.png`` redraws it from the committed JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torch.nn.functional as F

from app.evaluator import evaluate_split
from data.gen1 import list_recordings
from models.compress.accounting import active_positions, dense_reference, model_report, static_counts
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
# executed FLOPs of unpruned models differ by ~0.01 % with their membranes' activity: the same operating cost
SAME_COST = 0.01
# the paper's targets (SpQuant-SNN abstract): executed FLOPs and memory reductions, AP points lost at most
FLOPS_TARGET = 4.7
MEMORY_TARGET = 13.0
MAX_DROP = 1.8
SCALE_MARKERS = {"n": "o", "s": "s", "m": "^", "l": "D", "x": "P"}  # marker of each scale in the front figure


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
    row = {
        "name": name,
        "path": str(path),
        "variant": cfg.variant,
        "scale": cfg.scale,
        "weight_bits": cfg.weight_bits if cfg.quantized else 32,
        "head_bits": cfg.head_bits,
        "head_act_bits": cfg.head_act_bits,
        "membrane": "ternary" if cfg.quantized else "fp32",
        "pruned": cfg.pruned,
        "channel_gates": cfg.channel_gates,
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
    return {**row, "method": method_of(row)}


def _bits(bits: int) -> str:
    return "FP32" if bits == 32 else "ternary" if bits == 2 else f"{bits}-bit"


def method_of(row: Mapping[str, Any]) -> str:
    """The method a row's config describes: FP32 baseline or quantized (its weight and head bits), pruned or not.

    Reads only config fields a row records (``variant``, ``weight_bits``, ``head_bits``, ``head_act_bits``,
    ``pruned``, ``channel_gates``), so rows of JSONs written before ``method`` existed get one too.
    """
    pruned = (" + pruned" if row["pruned"] else "") + (" + channel gates" if row.get("channel_gates") else "")
    if row["variant"] != "spquant":
        return f"FP32 baseline{pruned}"
    head = _bits(row["head_bits"]) + (" integer" if row.get("head_act_bits") else "")
    return f"quantized{pruned}: {_bits(row['weight_bits'])} weights, {head} head"


def gated_conv(x: torch.Tensor, conv: torch.nn.Conv2d, tile: int) -> torch.Tensor:
    """``conv(x)`` computed only at the active output positions (others are 0): gather patches, one matmul."""
    n, _, h, w = x.shape
    kh, kw = conv.kernel_size
    (sh, sw), (ph, pw) = conv.stride, conv.padding
    out_h, out_w = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    active = active_positions(x, conv, (out_h, out_w), tile).nonzero()  # [P, 3]: sample, row, column
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
                mask = active_positions(x, conv, dense.shape[2:], tile).unsqueeze(1).bool()
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


def add_reductions(rows: list[dict[str, Any]], reference_name: str | None = None) -> None:
    """Give every row its reference (the row named ``reference_name``, else the first row of its scale), its
    reductions and its AP drop against it."""
    references: dict[str, dict[str, Any]] = {}
    named = next((row for row in rows if row["name"] == reference_name), None)
    if reference_name is not None and named is None:
        raise ValueError(f"no row is named {reference_name!r} (rows: {', '.join(r['name'] for r in rows)})")
    for row in rows:
        reference = named if named is not None else references.setdefault(row["scale"], row)
        row["reference"] = reference["name"]
        row["memory_reduction"] = reference["memory_bytes"] / row["memory_bytes"]
        row["memory_reduction_shipped"] = (None if row["shipped_bytes"] is None
                                           else reference["memory_bytes"] / (row["shipped_bytes"] + row["state_bytes"]))
        row["flops_reduction"] = reference["flops_dense"] / row["flops_executed"]
        row["flops_reduction_event_driven"] = reference["flops_dense"] / row["flops_event_driven"]
        row["AP_drop_points"] = 100 * (reference["AP"] - row["AP"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("datasets/synth-v1"))
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--model", action="append", default=None, metavar="NAME=PATH",
                        help="a row (repeatable; the first of each scale is its reference); default: the three "
                        "bundled models")
    parser.add_argument("--reference", default=None, metavar="NAME",
                        help="the row every other is measured against (default: the first row of each scale), e.g. "
                        "a smaller scale's baseline to compare scales at equal executed FLOPs")
    parser.add_argument("--append", type=Path, default=None, metavar="JSON",
                        help="start from the rows of a JSON this script wrote (kept as measured then; a --model of "
                        "the same name replaces its row) and add the --model rows")
    parser.add_argument("--windows", type=int, default=600, help="windows measured for FLOPs (0 = all)")
    parser.add_argument("--tile", type=int, default=4, help="tile of the CPU gating check")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--from", dest="rows_from", type=Path, default=None, metavar="JSON",
                        help="measure nothing: print and draw the rows of a JSON this script wrote (--out unused)")
    parser.add_argument("--plot", type=Path, default=None, metavar="PNG", help="also draw the AP / FLOPs trade-off")
    parser.add_argument("--front", type=Path, default=None, metavar="PNG",
                        help="also draw the front: AP against executed FLOPs and against memory")
    args = parser.parse_args()
    if args.rows_from:
        rows = read_rows(args.rows_from)
        front = operating_points(rows)
        print(format_table(rows))
    else:
        rows, front = measure_all(args, parser)
    print(format_summary(front))
    if args.plot:
        plot_tradeoff(rows, args.plot)
        print(f"wrote {args.plot}")
    if args.front:
        plot_front(rows, args.front)
        print(f"wrote {args.front}")


def measure_all(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[list[dict[str, Any]],
                                                                                    dict[str, Any]]:
    """Measure every ``--model``, write the JSON to ``--out``, print the table and the gating checks."""
    torch.set_num_threads(args.threads)
    specs = []
    for spec in args.model or DEFAULT_MODELS:
        name, sep, path = spec.partition("=")
        if not sep:
            parser.error(f"--model takes NAME=PATH, got {spec!r}")
        specs.append((name, Path(path)))
    earlier = read_rows(args.append) if args.append else []
    new_names = {name for name, _ in specs}
    if args.reference is not None and args.reference not in new_names | {row["name"] for row in earlier}:
        parser.error(f"--reference {args.reference!r} names no row")  # before minutes of measuring
    rows = [row for row in earlier if row["name"] not in new_names]
    measured_at = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())
    for name, path in specs:
        rows.append({**measure(name, path, args.data, args.split, args.windows), "measured_at": measured_at})
        print(f"measured {name}", flush=True)
    new_rows = rows[len(rows) - len(specs):]
    # the gating checks run on this run's models (an appended JSON's checkpoints may be gone)
    gating = gating_on_cpu(Path(new_rows[-1]["path"]), args.data, args.split, 100, args.tile)
    ceiling = gating_ceiling(Path(new_rows[0]["path"]), args.data, args.split, args.windows)
    add_reductions(rows, args.reference)
    front = operating_points(rows)
    result = {
        "data": str(args.data),
        "split": args.split,
        "threads": args.threads,
        "accounting": "memory = weights packed at their bits (Detect head at head_bits; BN, thresholds, biases FP32) + "
        "one stream's membrane state packed at the grid's bits; memory shipped = the exported .spq file + the same "
        "state; FLOPs executed per window = conv MACs over the kept channels at every position + membrane updates of "
        "non-zero states (what the runtimes run); FLOPs event-driven = the same less conv positions whose receptive "
        "field is silent (a ceiling: what event-driven hardware could skip); reductions and AP drop against each "
        "row's reference (the FP32 dense model of the first row of the same scale, or the --reference row); method "
        "from each checkpoint's config; measured_at: when the run that measured the row began (rows without it "
        "were measured before it was recorded)",
        "rows": rows,
        "front": front,
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
    return rows, front


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON this script wrote, their method re-derived from their config fields."""
    return [{**row, "method": method_of(row)} for row in json.loads(path.read_text())["rows"]]


def pareto_front(points: Sequence[tuple[float, float]], tolerance: float = 0.0) -> list[int]:
    """Indices of the (cost, AP) points no other point beats, sorted by cost then index.

    A point is beaten when another costs no more and scores no less, and is strictly better on one of the two; so a
    point that only ties on one axis and loses on the other is off the front, and exact duplicates all stay on it.
    Costs within ``tolerance`` (relative) of each other count as equal.
    """

    def cheaper(c: float, cost: float) -> bool:
        return c < cost and cost - c > tolerance * cost

    front = [i for i, (cost, ap) in enumerate(points)
             if not any(not cheaper(cost, c) and a >= ap and (cheaper(c, cost) or a > ap) for c, a in points)]
    return sorted(front, key=lambda i: (points[i][0], i))


def _point(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    keys = ("name", "method", "scale", "reference", "AP", "AP_drop_points", "flops_reduction", "memory_reduction")
    return None if row is None else {**{k: row[k] for k in keys}, "meets_AP_target": row["AP_drop_points"] <= MAX_DROP}


def operating_points(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Both Pareto fronts (by name) and the best point (highest AP) at the FLOPs target and at the memory target.

    Where no row reaches the FLOPs target, ``highest_flops_reduction`` says which came closest.
    """
    def best(candidates: list[Mapping[str, Any]], key: str) -> Mapping[str, Any] | None:
        return max(candidates, key=lambda r: (r["AP"], r[key]), default=None)

    return {
        "targets": {"flops_reduction": FLOPS_TARGET, "memory_reduction": MEMORY_TARGET, "max_AP_drop_points": MAX_DROP},
        "pareto_flops": [rows[i]["name"] for i in pareto_front([(r["flops_executed"], r["AP"]) for r in rows],
                                                                SAME_COST)],
        "pareto_memory": [rows[i]["name"] for i in pareto_front([(r["memory_bytes"], r["AP"]) for r in rows],
                                                                 SAME_COST)],
        "same_cost_tolerance": SAME_COST,
        "best_at_flops_target": _point(best([r for r in rows if r["flops_reduction"] >= FLOPS_TARGET],
                                            "flops_reduction")),
        "highest_flops_reduction": _point(max(rows, key=lambda r: (r["flops_reduction"], r["AP"]))),
        "best_at_memory_target": _point(best([r for r in rows if r["memory_reduction"] >= MEMORY_TARGET],
                                             "memory_reduction")),
    }


def format_summary(front: Mapping[str, Any]) -> str:
    """The operating points of :func:`operating_points`, in a few lines."""

    def describe(p: Mapping[str, Any]) -> str:
        verdict = "meets" if p["meets_AP_target"] else "misses"
        return (f"{p['name']} ({p['method']}, scale {p['scale']}): AP {p['AP']:.3f}, {-p['AP_drop_points']:+.1f} "
                f"points vs {p['reference']} ({verdict} the {MAX_DROP}-point target), {p['flops_reduction']:.2f}x "
                f"executed FLOPs, {p['memory_reduction']:.1f}x memory")

    best, closest = front["best_at_flops_target"], front["highest_flops_reduction"]
    lines = [f"Pareto front, AP vs executed FLOPs: {' | '.join(front['pareto_flops'])}",
             f"Pareto front, AP vs memory: {' | '.join(front['pareto_memory'])}"]
    if best:
        lines.append(f"best at >= {FLOPS_TARGET}x executed FLOPs: {describe(best)}")
    else:
        lines.append(f"no model reaches {FLOPS_TARGET}x executed FLOPs; the closest: {describe(closest)}")
    memory = front["best_at_memory_target"]
    lines.append(f"best at >= {MEMORY_TARGET:g}x memory: {describe(memory)}" if memory
                 else f"no model reaches {MEMORY_TARGET:g}x memory")
    return "\n".join(lines)


def plot_tradeoff(rows: list[dict[str, Any]], path: Path, flops_target: float = FLOPS_TARGET,
                  max_drop: float = MAX_DROP) -> None:
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


def plot_front(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Test AP against executed MFLOPs per window and against ideal memory per stream (both log x).

    One marker per model (colour: method; shape: scale; numbered, the key below), each scale's FP32 baseline ringed
    with its AP dotted across, each panel's Pareto front as a step line, and the paper's target region shaded
    relative to each scale's baseline.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(dict.fromkeys(r["method"] for r in rows))}
    references = {r["scale"]: r for r in rows if r["name"] == r["reference"]}
    # (row key, its unit, the reference's key the target divides, the target, axis label)
    panels = (("flops_executed", 1e-6, "flops_dense", FLOPS_TARGET, "executed MFLOPs per window (log)"),
              ("memory_bytes", 1e-3, "memory_bytes", MEMORY_TARGET,
               "memory per stream, kB (weights packed at their bits + membrane state; log)"))
    aps = [r["AP"] for r in rows] + [ref["AP"] - MAX_DROP / 100 for ref in references.values()]
    bottom, top = min(aps) - 0.015, max(aps) + 0.012
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), sharey=True, dpi=110)
    for ax, (key, unit, ref_key, target, label) in zip(axes, panels, strict=True):
        xs = [r[key] * unit for r in rows]
        limits = {scale: ref[ref_key] * unit / target for scale, ref in references.items()}
        left, right = min(*xs, *limits.values()) / 1.4, max(xs) * 1.4
        for scale, ref in references.items():
            floor = ref["AP"] - MAX_DROP / 100
            ax.fill_between([left, limits[scale]], floor, top, color="tab:green", alpha=0.13, lw=0, zorder=0)
            ax.annotate(f"target, scale {scale}: ≤ {limits[scale]:.{1 if limits[scale] < 100 else 0}f} (≥ {target:g}×)",
                        (left, floor), xytext=(3, -9), textcoords="offset points", fontsize=7, color="darkgreen")
            ax.axhline(ref["AP"], color="0.45", ls=":", lw=1, zorder=1)
            ax.annotate(f"FP32 baseline, scale {scale}", (left, ref["AP"]), xytext=(3, 3), textcoords="offset points",
                        fontsize=7, color="0.35")
        if len(references) == 1:  # one reference: its reductions can be read off a top axis
            base = next(iter(references.values()))[ref_key] * unit
            ticks = [t for t in (1, 1.5, 2, 3, 8, 20, 30, 60) if left < base / t < right
                     and abs(math.log(t / target)) > 0.3] + [target]  # no tick crowding the target's
            top_axis = ax.twiny()
            top_axis.set_xscale("log")
            top_axis.set_xlim(left, right)
            top_axis.set_xticks([base / t for t in ticks], [f"{t:g}×" for t in ticks], fontsize=7)
            top_axis.xaxis.set_minor_locator(NullLocator())
        front = pareto_front([(x, r["AP"]) for x, r in zip(xs, rows, strict=True)], SAME_COST)
        ax.step([xs[i] for i in front] + [right], [rows[i]["AP"] for i in front] + [rows[front[-1]]["AP"]],
                where="post", color="k", lw=1.2, alpha=0.6, zorder=2)
        for r, x in zip(rows, xs, strict=True):
            ring = r["name"] == r["reference"]
            ax.scatter(x, r["AP"], s=150 if ring else 55, marker=SCALE_MARKERS.get(r["scale"], "X"),
                       color=colours[r["method"]], edgecolors="k", linewidths=1.6 if ring else 0.5, zorder=3)
        ax.set_xscale("log")
        ax.set_xlim(left, right)
        ax.set_ylim(bottom, top)
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 3, 5)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("test AP")
    top_label = "  (top: reduction vs the FP32 baseline)" if len(references) == 1 else ""
    axes[0].set_title(f"AP against executed FLOPs{top_label}", fontsize=10)
    axes[1].set_title(f"AP against memory{top_label}", fontsize=10)
    handles = [Line2D([], [], ls="", marker=SCALE_MARKERS.get(r["scale"], "X"), color=colours[r["method"]],
                      markeredgecolor="k", markersize=7, label=f"{i}  {r['name']}: {r['method']}, scale {r['scale']}")
               for i, r in enumerate(rows, 1)]
    handles += [Line2D([], [], ls="", marker="o", markersize=10, markerfacecolor="none", markeredgecolor="k",
                       markeredgewidth=1.6, label="ringed: the scale's FP32 baseline, the reference (dotted: its AP)"),
                Line2D([], [], color="k", alpha=0.6,
                       label=f"Pareto front (costs within {SAME_COST:.0%} count as equal)"),
                Patch(color="tab:green", alpha=0.13, label=f"paper's target: ≥ {FLOPS_TARGET}× executed FLOPs (left) "
                      f"or ≥ {MEMORY_TARGET:g}× memory (right) at ≤ {MAX_DROP} AP points below the baseline")]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)
    key_rows = math.ceil(len(handles) / 2)
    fig.tight_layout(rect=(0, 0.037 * key_rows + 0.02, 1, 1))
    for ax, (key, unit, *_) in zip(axes, panels, strict=True):  # after the layout, which moves the axes
        _number_points(ax, [r[key] * unit for r in rows], [r["AP"] for r in rows])
    fig.savefig(path)
    plt.close(fig)


def _number_points(ax: Any, xs: Sequence[float], ys: Sequence[float]) -> None:
    """Write each point's 1-based number beside it, moving a number right until it clears those already written."""
    to_points = 72 / ax.figure.dpi
    placed: list[tuple[float, float]] = []
    for i in sorted(range(len(xs)), key=lambda i: (-ys[i], xs[i])):
        px, py = (to_points * v for v in ax.transData.transform((xs[i], ys[i])))
        dx = 8.0
        while any(abs(px + dx - qx) < 8 and abs(py - qy) < 7 for qx, qy in placed):
            dx += 8
        placed.append((px + dx, py))
        ax.annotate(str(i + 1), (xs[i], ys[i]), xytext=(dx, -2.5), textcoords="offset points", fontsize=7, zorder=4)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the rows."""
    lines = [
        "| model | method | scale | AP | AP50 | ΔAP (points) | memory | shipped .spq | memory red. (ideal / shipped) | "
        "MFLOPs/window executed | FLOPs red. | event-driven ceiling | CPU ms/window |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        shipped = "—" if r["shipped_bytes"] is None else f"{r['shipped_bytes'] / 1e3:.1f} kB"
        shipped_red = "—" if r["memory_reduction_shipped"] is None else f"{r['memory_reduction_shipped']:.1f}x"
        lines.append(
            f"| {r['name']} | {r['method']} | {r['scale']} | {r['AP']:.3f} | {r['AP50']:.3f} | "
            f"{0.0 - round(r['AP_drop_points'], 1):+.1f} | {r['memory_bytes'] / 1e3:.1f} kB | {shipped} | "
            f"{r['memory_reduction']:.1f}x / {shipped_red} | {r['flops_executed'] / 1e6:.1f} | "
            f"{r['flops_reduction']:.2f}x | {r['flops_reduction_event_driven']:.2f}x | {r['ms_per_window']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
