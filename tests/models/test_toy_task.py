"""The SNN core learns for real: moving-bar direction with ternary membranes and 4-bit weights.

Runs the same code as ``benchmarks/toy_task.py`` (loaded from its file; ``benchmarks/`` is not a package).
With random bar contrast a single time bin is ambiguous, so a high accuracy shows that information is carried
across time in the quantized membranes; the memoryless control (leak 0) is held to chance on the direction.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest
import torch

from tests.conftest import REPO


def _load_toy_task() -> ModuleType:
    path = REPO / "benchmarks" / "toy_task.py"
    spec = importlib.util.spec_from_file_location("toy_task", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["toy_task"] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


toy_task = _load_toy_task()


def test_bar_data_is_deterministic_and_balanced() -> None:
    task = toy_task.BarTask()
    x, y = toy_task.moving_bars(task, 256, seed=5)
    x2, y2 = toy_task.moving_bars(task, 256, seed=5)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == (task.steps, 256, 2, task.size, task.size) and set(x.unique().tolist()) == {0.0, 1.0}
    assert torch.bincount(y, minlength=4).min() > 40
    clean, _ = toy_task.moving_bars(toy_task.BarTask(noise=0.0), 64, seed=6)
    assert (clean.sum(dim=(2, 3, 4)) > 0).all()  # every bin of every sample has edge events


def test_quantized_network_learns_and_threshold_moves() -> None:
    result = toy_task.train("quantized", steps=200, seed=0)
    assert result["test_accuracy"] >= 0.9, result
    moved = [abs(a - b) for before, after in zip(result["thresholds_before"], result["thresholds_after"], strict=True)
             for b, a in zip(before, after, strict=True)]
    assert max(moved) > 0.01, result["thresholds_after"]
    assert result["int8_state_bytes_per_sample"] * 4 == result["state_bytes_per_sample"]


def test_memoryless_control_cannot_tell_direction() -> None:
    result = toy_task.train("quantized", steps=100, seed=0, leak=0.0)
    assert result["test_accuracy"] < 0.7, result


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantized_matches_full_precision(seed: int) -> None:
    quantized = toy_task.train("quantized", steps=300, seed=seed)
    fp32 = toy_task.train("fp32", steps=300, seed=seed)
    assert fp32["test_accuracy"] >= 0.95, fp32
    assert quantized["test_accuracy"] >= 0.95, quantized
    assert fp32["test_accuracy"] - quantized["test_accuracy"] <= 0.03
