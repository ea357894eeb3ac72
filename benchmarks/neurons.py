"""Forward time and state bytes of 1 M LIF neurons × T steps: ours (FP32, quantized, and the integer runtime's int8
neuron) vs snntorch and spikingjelly, in one run.

All implementations see the same input (``rand * 2``), run under ``torch.no_grad()`` from a fresh state, and are
timed round-robin (one call each per round, so that background load hits them alike); medians and bests over the
rounds are reported. The peers use the closest equivalent of our neuron: leak 0.5 (snntorch ``beta=0.5``,
spikingjelly ``tau=2, decay_input=False``), threshold 1, hard reset to 0.

Run: ``python benchmarks/neurons.py`` (writes ``benchmarks/results/neurons.json`` and prints a table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from models.inference.export import FRAC_BITS, fixed_point
from models.inference.runtime import IntLIF
from models.networks.neuron import IntegerLIF, NeuronConfig

RESULTS = Path(__file__).resolve().parent / "results" / "neurons.json"
FP32_BYTES = 4


Runner = tuple[Callable[[Tensor], Tensor], Callable[[], int]]  # (run T steps from a fresh state, state bytes)


def ours(config: NeuronConfig) -> Runner:
    """Our trained-model :class:`IntegerLIF` (float membrane, quantized to the level grid or not)."""
    neuron = IntegerLIF(config)
    last: dict[str, Tensor] = {}

    def run(x: Tensor) -> Tensor:
        spikes, last["state"] = neuron(x)
        return spikes

    return run, lambda: last["state"].numel() * last["state"].element_size()


def ours_int8(config: NeuronConfig, channels: int) -> Runner:
    """The integer runtime's neuron (what serving runs): ``Q(F)`` int64 currents in, int8 level codes as state, the
    compiled kernel; its input is the float input rounded to the runtime's fixed point (once, outside the timing:
    in the runtime the currents come out of the conv's requantization)."""
    one = 2.0**FRAC_BITS
    spec = {"channels": channels, "input": "stream", "reset": config.reset, "code_min": config.grid.code_min,
            "code_max": config.grid.code_max, "step_shift": FRAC_BITS, "leak_shift": FRAC_BITS - 1}  # λ = 0.5
    maps = fixed_point(np.ones(channels), np.zeros(channels), np.full(channels, 4 * one), "lif")  # θ = 1
    lif = IntLIF(spec, {f"lif.{k}": v for k, v in maps.items()}, "lif", FRAC_BITS)
    last: dict[str, Tensor] = {}
    currents: dict[int, Tensor] = {}

    def run(x: Tensor) -> Tensor:
        if x.data_ptr() not in currents:
            currents[x.data_ptr()] = (x.double() * one).round().to(torch.int64)  # [T, B, C, H, W] Q(F)
        codes = torch.zeros(x.shape[1:], dtype=torch.int8)
        spikes, last["state"] = lif.fused(currents[x.data_ptr()], codes, lif.map)
        return spikes

    return run, lambda: last["state"].numel() * last["state"].element_size()


def snntorch_leaky() -> Runner:
    """snntorch ``Leaky`` with explicit ``mem``, looped over T."""
    import snntorch

    lif = snntorch.Leaky(beta=0.5, threshold=1.0, reset_mechanism="zero")
    last: dict[str, Tensor] = {}

    def run(x: Tensor) -> Tensor:
        mem = lif.init_leaky()
        spikes = []
        for t in range(x.shape[0]):
            spike, mem = lif(x[t], mem)
            spikes.append(spike)
        last["mem"] = mem
        return torch.stack(spikes)

    return run, lambda: last["mem"].numel() * last["mem"].element_size()


def spikingjelly_lif() -> Runner:
    """spikingjelly 0.0.0.0.14 multi-step ``LIFNode`` on the torch backend, reset before each call."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 0.0.0.0.14 warns that cupy is missing
        from spikingjelly.activation_based import functional, neuron

    lif = neuron.LIFNode(tau=2.0, decay_input=False, v_threshold=1.0, v_reset=0.0, step_mode="m", backend="torch")

    def run(x: Tensor) -> Tensor:
        functional.reset_net(lif)
        return lif(x)

    return run, lambda: lif.v.numel() * lif.v.element_size()


def measure(shape: tuple[int, ...], steps: int, rounds: int, warmup: int = 2) -> dict:
    """Time every implementation round-robin on one input ``[steps, *shape]``; returns the report dict."""
    torch.manual_seed(0)
    x = torch.rand(steps, *shape) * 2  # [T, B, C, H, W]
    quantized = NeuronConfig()
    impls = {
        "ours fp32": ours(NeuronConfig(quantize_membrane=False)),
        "ours quantized": ours(quantized),
        "ours int8": ours_int8(quantized, shape[1]),
        "snntorch Leaky": snntorch_leaky(),
        "spikingjelly LIFNode": spikingjelly_lif(),
    }
    times: dict[str, list[float]] = {name: [] for name in impls}
    outputs: dict[str, Tensor] = {}
    with torch.no_grad():
        for r in range(warmup + rounds):
            for name, (run, _) in impls.items():
                start = time.perf_counter()
                outputs[name] = run(x)
                if r >= warmup:
                    times[name].append((time.perf_counter() - start) * 1e3)
    agreement = float((outputs["ours int8"] == outputs["ours quantized"]).float().mean())
    if agreement < 0.999:  # only fixed-point rounding of the input may flip a spike at the threshold
        raise RuntimeError(f"the integer neuron agrees with the float one on only {agreement:.4%} of the spikes")
    neurons = x[0].numel()
    rows = {}
    for name, (_, state_bytes) in impls.items():
        rows[name] = {
            "median_ms": round(statistics.median(times[name]), 3),
            "best_ms": round(min(times[name]), 3),
            "state_bytes": state_bytes(),
            "spike_rate": round(outputs[name].float().mean().item(), 4),
        }
    rows["ours int8"]["state_bytes_packed"] = quantized.grid.packed_nbytes(neurons)
    fastest_peer = min(rows[p]["median_ms"] for p in ("snntorch Leaky", "spikingjelly LIFNode"))
    fp32_state = neurons * FP32_BYTES
    for row in rows.values():
        row["time_vs_fastest_peer"] = round(row["median_ms"] / fastest_peer, 3)
        row["state_reduction_vs_fp32"] = round(fp32_state / row["state_bytes"], 2)
    rows["ours int8"]["packed_reduction_vs_fp32"] = round(fp32_state / rows["ours int8"]["state_bytes_packed"], 2)
    return {"neurons": neurons, "steps": steps, "shape": list(shape), "rounds": rounds,
            "int8_spike_agreement": agreement, "results": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="1,16,250,250", help="B,C,H,W of one time step (default: 1 M neurons)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = measure(tuple(int(v) for v in args.shape.split(",")), args.steps, args.rounds)
    report["machine"] = {"torch": torch.__version__, "threads": args.threads, "cpus": os.cpu_count(),
                         "processor": platform.processor() or platform.machine(), "python": platform.python_version()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"{report['neurons']:,} neurons × T={report['steps']}, {args.threads} threads, {args.rounds} rounds")
    print(f"{'implementation':<22} {'median ms':>10} {'best ms':>8} {'vs fastest peer':>16} {'state bytes':>12} "
          f"{'state vs fp32':>14}")
    for name, row in report["results"].items():
        print(f"{name:<22} {row['median_ms']:>10.2f} {row['best_ms']:>8.2f} {row['time_vs_fastest_peer']:>15.2f}x "
              f"{row['state_bytes']:>12,} {row['state_reduction_vs_fp32']:>13.1f}x")
    packed = report["results"]["ours int8"]
    print(f"{'ours int8, packed':<22} {'':>10} {'':>8} {'':>16} {packed['state_bytes_packed']:>12,} "
          f"{packed['packed_reduction_vs_fp32']:>13.1f}x")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
