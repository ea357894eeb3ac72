"""Training throughput (windows/s of forward + backward + optimizer step) of the bundled recipe: the fused LIF against
the reference step loop, in one run, plus a profile of one step of each and the data loader's share of a step.

What runs is the trainer's step (``app/trainer.py``): the ``L``-window unroll with the state carried (detached at the
chunk start), the detection loss on every window, backward, gradient clipping, AdamW, EMA. "reference" is the
step loop of ``IntegerLIF._run`` (the implementation before the fused one, unchanged), chosen with
``use_implementation(model, "reference")``; "fused" is ``models/networks/fused_lif.py``. Both models start from the
same weights and see the same batches; they are timed round-robin (one step each per round, so background load
hits them alike) and medians are reported.

Inputs are synthetic stacked histograms (2 % of pixels hold 1–3 events per bin) with two boxes per window, so no
dataset is needed. ``--loader`` also generates a small synthetic Gen1-layout dataset and runs fused training steps
on its batches, built in-process and in loader processes (``data/loader.py``): the loader's share is the time a step
waits for its batch over the total.

Run: ``python benchmarks/train_throughput.py`` (writes ``benchmarks/results/train_throughput.json`` and prints a
table); ``--rounds``, ``--variants``, ``--threads``, ``--no-profile`` and ``--loader`` adjust it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.formats.labels import BBOX_DTYPE
from models.networks.detector import DetectorConfig, build_detector
from models.networks.loss import DetectionLoss
from models.networks.neuron import use_implementation
from models.networks.state import detach_state
from models.networks.ultralytics_parts import ModelEMA

RESULTS = Path(__file__).resolve().parent / "results" / "train_throughput.json"
IMPLEMENTATIONS = ("reference", "fused")


class Step:
    """The trainer's optimisation step on one model (state carried between calls)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.train()
        self.loss = DetectionLoss(model)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        self.ema = ModelEMA(model, decay=0.998)
        self.state: Any = None

    def __call__(self, x: torch.Tensor, boxes: list[np.ndarray]) -> float:
        # x [L, B, T, 2, H, W] uint8
        self.state = detach_state(self.state)
        total = torch.zeros(())
        for i in range(x.shape[0]):
            out, self.state = self.model(x[i].transpose(0, 1), self.state)
            loss, _ = self.loss(out, boxes)
            total = total + loss
        self.optimizer.zero_grad(set_to_none=True)
        (total / x.shape[0] / x.shape[1]).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
        self.optimizer.step()
        self.ema.update(self.model)
        return float(total.detach())


def synthetic_batch(config: DetectorConfig, batch: int, seq_len: int, seed: int) -> tuple[torch.Tensor, list]:
    """``[L, B, T, 2, H, W]`` uint8 histograms and two boxes per window (the same boxes for every window)."""
    gen = torch.Generator().manual_seed(seed)
    height, width = config.padded_size
    shape = (seq_len, batch, config.bins, 2, height, width)
    x = ((torch.rand(shape, generator=gen) < 0.02) * torch.randint(1, 4, shape, generator=gen)).to(torch.uint8)
    boxes = np.zeros(2, BBOX_DTYPE)
    boxes["x"], boxes["y"], boxes["w"], boxes["h"], boxes["class_id"] = [10, 60], [20, 40], [40, 16], [24, 36], [0, 1]
    return x, [boxes] * batch


def profile_step(step: Step, x: torch.Tensor, boxes: list, top: int) -> list[dict[str, Any]]:
    """The ``top`` operators of one step by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(x, boxes)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    return [{"name": e.key, "self_ms": round(e.self_cpu_time_total / 1e3, 2), "calls": e.count,
             "share": round(e.self_cpu_time_total / total, 4)} for e in rows]


def measure_steps(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved step timings of every implementation for one variant."""
    torch.manual_seed(0)
    config = DetectorConfig(variant=variant, scale=args.scale, input_width=args.width, input_height=args.height,
                            bins=args.bins)
    base = build_detector(config)
    steps = {}
    for impl in IMPLEMENTATIONS:
        model = copy.deepcopy(base)
        use_implementation(model, impl)
        steps[impl] = Step(model)
    x, boxes = synthetic_batch(config, args.batch, args.seq_len, seed=1)
    for impl in IMPLEMENTATIONS:  # warm-up: numba compilation (cached), allocator, oneDNN primitives
        for _ in range(args.warmup):
            steps[impl](x, boxes)
    seconds: dict[str, list[float]] = {impl: [] for impl in IMPLEMENTATIONS}
    for _ in range(args.rounds):
        for impl in IMPLEMENTATIONS:
            start = time.perf_counter()
            steps[impl](x, boxes)
            seconds[impl].append(time.perf_counter() - start)
    windows = args.batch * args.seq_len
    out: dict[str, Any] = {"windows_per_step": windows}
    for impl in IMPLEMENTATIONS:
        median = statistics.median(seconds[impl])
        out[impl] = {"median_s": round(median, 4), "best_s": round(min(seconds[impl]), 4),
                     "windows_per_s": round(windows / median, 2), "rounds_s": [round(s, 4) for s in seconds[impl]]}
    out["speedup_median"] = round(out["reference"]["median_s"] / out["fused"]["median_s"], 3)
    if args.profile:
        out["profile"] = {impl: profile_step(steps[impl], x, boxes, args.top) for impl in IMPLEMENTATIONS}
    return out


def measure_loader(args: argparse.Namespace) -> dict[str, Any]:
    """The loader's share of a training step: real fused spquant steps on batches of a small synthetic dataset, built
    in-process (``workers=0``) and in worker processes; the time the step waits for its next batch over the total."""
    from data.augment import Augmentation
    from data.gen1 import list_recordings
    from data.loader import epoch_batches
    from data.representation import StackedHistogram
    from data.sequences import SequenceStreams
    from data.synthetic.dataset import write_dataset
    from data.synthetic.presets import difficulty_config

    config = DetectorConfig(variant="spquant", scale=args.scale, input_width=args.width, input_height=args.height,
                            bins=args.bins)
    out: dict[str, Any] = {"dataset": f"spquant synth, normal: {args.loader_recordings} recordings of "
                                      f"{args.loader_seconds} s, flip and zoom augmentation"}
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(tmp, difficulty_config("normal"), recordings=args.loader_recordings,
                      duration_s=args.loader_seconds, seed=0, splits=("train",), progress=False)
        histogram = StackedHistogram(bins=args.bins, window_us=50_000, height=args.height, width=args.width)
        streams = SequenceStreams(list_recordings(tmp, "train"), histogram, args.batch, args.seq_len,
                                  Augmentation(0.5, 0.3, 1.5), seed=0)
        torch.manual_seed(0)
        base = build_detector(config)
        for workers in args.loader_workers:
            step = Step(copy.deepcopy(base))
            wait, busy = [], []
            batches = epoch_batches(streams, 0, workers=workers)
            for _ in range(min(len(streams), args.loader_steps)):
                start = time.perf_counter()
                batch = next(batches)
                ready = time.perf_counter()
                step(torch.from_numpy(batch.inputs), batch.boxes[0])  # timing only: window 0's boxes
                wait.append(ready - start)
                busy.append(time.perf_counter() - ready)
            batches.close()
            skip = 1  # the first batch includes starting the workers (once per epoch)
            out[f"workers={workers}"] = {
                "steps": len(wait), "first_wait_s": round(wait[0], 4),
                "median_wait_s": round(statistics.median(wait[skip:]), 4),
                "median_step_s": round(statistics.median(busy[skip:]), 4),
                "loader_share": round(sum(wait[skip:]) / (sum(wait[skip:]) + sum(busy[skip:])), 4),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["spquant", "baseline"])
    parser.add_argument("--scale", default="n")
    parser.add_argument("--width", type=int, default=152)
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--bins", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--top", type=int, default=15, help="profile rows kept per implementation")
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--loader", action="store_true", help="also measure the data loader's share of a step")
    parser.add_argument("--loader-workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--loader-steps", type=int, default=8)
    parser.add_argument("--loader-recordings", type=int, default=2)
    parser.add_argument("--loader-seconds", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    result: dict[str, Any] = {
        "what": "windows/s of the trainer's step (L-window unroll, loss, backward, clip, AdamW, EMA), fused LIF vs "
                "the reference step loop, same weights and batches, interleaved rounds, one process",
        "recipe": {"scale": args.scale, "input": [args.width, args.height], "batch": args.batch,
                   "seq_len": args.seq_len, "bins": args.bins, "data": "synthetic histograms, 2 % active pixels"},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "note": "2 shared cores, other jobs running"},
        "rounds": args.rounds,
        "variants": {},
    }
    for variant in args.variants:
        result["variants"][variant] = measure_steps(variant, args)
    if args.loader:
        result["loader"] = measure_loader(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'variant':10} {'impl':10} {'median s':>9} {'best s':>8} {'windows/s':>10}")
    for variant, res in result["variants"].items():
        for impl in IMPLEMENTATIONS:
            r = res[impl]
            print(f"{variant:10} {impl:10} {r['median_s']:9.3f} {r['best_s']:8.3f} {r['windows_per_s']:10.1f}")
        print(f"{variant:10} speed-up (median, fused vs reference): {res['speedup_median']:.2f}x")
        for impl, rows in res.get("profile", {}).items():
            print(f"  profile {impl}: " + ", ".join(f"{r['name']} {r['self_ms']:.0f} ms" for r in rows[:5]))
    for key, value in result.get("loader", {}).items():
        print(f"loader {key}: {value}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
