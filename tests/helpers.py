"""Small event generators for tests."""

from __future__ import annotations

import numpy as np

from data.events import make_events


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
