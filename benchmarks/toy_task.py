"""Does the SNN core learn for real? Direction of a moving bar from synthetic events, quantized vs full precision.

A bar (random length, width, speed, position, and bright or dark) moves right, left, down or up; each time bin
holds the ON/OFF events of its edges plus sensor noise. With ``contrast="random"`` a single bin cannot tell a
bright bar moving right from a dark bar moving left (same edge polarities), so the network must carry
information across time bins in its membranes. The same tiny network is trained twice: ternary membranes with
4-bit weights (8-bit stem, as the first layer), and FP32 weights with FP32 membranes.

Run: ``python benchmarks/toy_task.py`` (writes ``benchmarks/results/toy_task.json`` and prints a table).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from models.networks.blocks import ConvBN, MSResidualBlock, SpikingConvBlock
from models.networks.neuron import IntegerLIF, NeuronConfig
from models.networks.quant import QuantConfig
from models.networks.state import State, state_nbytes

DIRECTIONS = ("right", "left", "down", "up")
RESULTS = Path(__file__).resolve().parent / "results" / "toy_task.json"


@dataclass(frozen=True)
class BarTask:
    """Shape and difficulty of the moving-bar data."""

    size: int = 16
    steps: int = 5
    noise: float = 0.02  # probability of a noise event per pixel, polarity and bin
    contrast: str = "random"  # "random" (needs memory) or "bright"


def moving_bars(task: BarTask, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` samples: events ``[T, n, 2, size, size]`` (0/1 per pixel, channel 0 = OFF, 1 = ON) and labels ``[n]``."""
    g = torch.Generator().manual_seed(seed)
    T, S = task.steps, task.size
    x = (torch.rand(T, n, 2, S, S, generator=g) < task.noise).float()
    labels = torch.randint(0, len(DIRECTIONS), (n,), generator=g)
    for i in range(n):
        label = int(labels[i])
        width = int(torch.randint(2, 4, (), generator=g))
        speed = int(torch.randint(1, 3, (), generator=g))
        length = int(torch.randint(6, S + 1, (), generator=g))
        offset = int(torch.randint(0, S - length + 1, (), generator=g))
        start = int(torch.randint(0, S - width - speed * T + 1, (), generator=g))
        bright = task.contrast == "bright" or bool(torch.rand((), generator=g) < 0.5)
        forward = label in (0, 2)  # right and down move to larger coordinates
        for t in range(T):
            pos = start + speed * t if forward else S - width - start - speed * t  # leading side moves by `speed`
            new = pos + speed if forward else pos - speed
            covered = range(max(pos + width, new), new + width) if forward else range(new, min(pos, new + width))
            uncovered = range(pos, min(new, pos + width)) if forward else range(max(new + width, pos), pos + width)
            on, off = (covered, uncovered) if bright else (uncovered, covered)
            frame = x[t, i]  # [2, S, S]
            for polarity, cols in ((1, on), (0, off)):
                if len(cols) == 0:
                    continue
                if label < 2:  # horizontal motion: a vertical bar
                    frame[polarity, offset:offset + length, cols.start:cols.stop] = 1
                else:
                    frame[polarity, cols.start:cols.stop, offset:offset + length] = 1
    return x, labels


class ToyNet(nn.Module):
    """stem (8-bit conv, BN, LIF) → conv, BN ↓2 → MS residual ↓2 → LIF → time/space mean → linear.

    The MS block reads a real-valued current (a conv + BN output), as in MS-ResNet, not spikes.
    """

    def __init__(self, neuron: NeuronConfig, quant: QuantConfig, stem_quant: QuantConfig, width: int = 16) -> None:
        super().__init__()
        self.stem = SpikingConvBlock(2, width, 3, 1, neuron, stem_quant)
        self.down = ConvBN(width, 2 * width, 3, 2, quant)
        self.res = MSResidualBlock(2 * width, 2 * width, 2, neuron, quant)
        self.out = IntegerLIF(neuron, channels=2 * width)
        self.head = nn.Linear(2 * width, len(DIRECTIONS))

    def forward(self, x: Tensor, state: State = None) -> tuple[Tensor, dict[str, State]]:
        state = state if state is not None else dict.fromkeys(("stem", "res", "out"))
        spikes, stem = self.stem(x, state["stem"])  # [T, B, w, S, S]
        current, res = self.res(self.down(spikes), state["res"])  # [T, B, 2w, S/4, S/4], real-valued
        spikes, out = self.out(current, state["out"])
        rates = spikes.float().mean(dim=(0, 3, 4))  # [B, 2w] firing rate per channel
        return self.head(rates), {"stem": stem, "res": res, "out": out}


def configs(mode: str, leak: float = 0.5) -> tuple[NeuronConfig, QuantConfig, QuantConfig]:
    """(neuron, body quant, stem quant) for ``"quantized"`` (ternary membrane, 4-bit, 8-bit stem) or ``"fp32"``."""
    if mode == "quantized":
        return NeuronConfig(leak=leak), QuantConfig(weight_bits=4), QuantConfig(weight_bits=8)
    if mode == "fp32":
        return (NeuronConfig(leak=leak, quantize_membrane=False), QuantConfig(weight_bits=32),
                QuantConfig(weight_bits=32))
    raise ValueError(f"mode must be 'quantized' or 'fp32', got {mode!r}")


def _accuracy(model: ToyNet, x: Tensor, y: Tensor, batch: int = 256) -> float:
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), batch):
            logits, _ = model(x[:, i:i + batch])
            correct += int((logits.argmax(1) == y[i:i + batch]).sum())
    return correct / len(y)


def train(mode: str, task: BarTask | None = None, steps: int = 300, batch: int = 32, n_train: int = 2048,
          n_test: int = 512, lr: float = 5e-3, seed: int = 0, leak: float = 0.5) -> dict:
    """Train one :class:`ToyNet` and report test accuracy, θ and state sizes (float32, and as int8 level codes).

    ``leak=0`` is the memoryless control: with random contrast it cannot beat 50 % (it only sees the axis).
    """
    task = task if task is not None else BarTask()
    torch.manual_seed(seed)
    x_train, y_train = moving_bars(task, n_train, seed=seed)
    x_test, y_test = moving_bars(task, n_test, seed=seed + 1)
    model = ToyNet(*configs(mode, leak))
    thresholds_before = [m.threshold.detach().clone() for m in model.modules() if isinstance(m, IntegerLIF)]
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        index = torch.randint(0, n_train, (batch,), generator=torch.Generator().manual_seed(seed * 100_003 + step))
        logits, _ = model(x_train[:, index])
        loss = nn.functional.cross_entropy(logits, y_train[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    train_s = time.perf_counter() - start
    model.eval()
    result = {
        "mode": mode,
        "task": task.__dict__,
        "steps": steps, "batch": batch, "lr": lr, "seed": seed, "leak": leak,
        "train_seconds": round(train_s, 2),
        "final_loss": round(loss.item(), 4),
        "test_accuracy": _accuracy(model, x_test, y_test),
        "thresholds_before": [t.flatten().tolist() for t in thresholds_before],
        "thresholds_after": [m.threshold.detach().flatten().tolist() for m in model.modules()
                             if isinstance(m, IntegerLIF)],
        "params": sum(p.numel() for p in model.parameters()),
    }
    with torch.no_grad():
        _, state = model(x_test[:, :1])
        result["state_bytes_per_sample"] = state_nbytes(state)
        if mode == "quantized":  # a ternary membrane stored as its int8 level code (what the integer runtime holds)
            result["int8_state_bytes_per_sample"] = state_nbytes(state) // 4  # float32 → 1 byte
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contrast", choices=("random", "bright"), default="random")
    parser.add_argument("--threads", type=int, default=1, help="tiny tensors: more threads only add sync overhead")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = BarTask(contrast=args.contrast)
    runs = [("quantized", 0.5), ("fp32", 0.5), ("quantized", 0.0)]  # the last one is the memoryless control
    results = [train(mode, task, steps=args.steps, seed=args.seed, leak=leak) for mode, leak in runs]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"torch": torch.__version__, "threads": args.threads, "results": results}, indent=2))
    print(f"moving-bar direction, contrast={task.contrast}, {args.steps} steps, seed {args.seed}")
    print(f"{'mode':<10} {'leak':>5} {'acc':>6} {'train s':>8} {'state B/sample':>15}")
    for r in results:
        state = r.get("int8_state_bytes_per_sample", r["state_bytes_per_sample"])
        print(f"{r['mode']:<10} {r['leak']:>5} {r['test_accuracy']:>6.3f} {r['train_seconds']:>8.1f} "
              f"{state:>15}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
