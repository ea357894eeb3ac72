"""Small event generators and detector fixtures for tests."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from data.events import make_events
from tests.conftest import REPO

SAMPLE = REPO / "data" / "samples" / "street_td.dat"  # the bundled 3 s synthetic recording
TINY = {"bins": 2, "input_width": 96, "input_height": 64}  # a detector config small enough for unit tests


def random_events(
    n: int, t_max: int = 1_000_000, width: int = 304, height: int = 240, seed: int = 0, t_min: int = 0
) -> np.ndarray:
    """``n`` time-ordered random events on a ``width`` × ``height`` sensor."""
    rng = np.random.default_rng(seed)
    return make_events(
        np.sort(rng.integers(t_min, t_max, n)),
        rng.integers(0, width, n),
        rng.integers(0, height, n),
        rng.integers(0, 2, n),
    )


def calibrated(model: torch.nn.Module, inputs: Iterable[torch.Tensor]) -> torch.nn.Module:
    """``model`` in eval mode with batch-norm statistics from ``inputs``, so that a random detector's deep layers fire.

    The statistics are a cumulative average (momentum None): a few windows settle them.
    """
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    with torch.no_grad():
        for x in inputs:
            model(x)
    return model.eval()
