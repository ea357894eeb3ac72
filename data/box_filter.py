"""The Prophesee box filter: which labelled boxes count (for evaluation, and for training targets)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BoxFilter:
    """Gen1 values as RVT applies them: skip the first 0.5 s, min diagonal 30 px, min side 10 px.

    ``t > skip_us`` is strict; the diagonal and side tests are inclusive (as in the Prophesee toolbox).
    """

    skip_us: int = 500_000
    min_diag: float = 30.0
    min_side: float = 10.0

    def __call__(self, boxes: np.ndarray) -> np.ndarray:
        """The boxes (label dtype) that pass."""
        w, h = boxes["w"].astype(np.float64), boxes["h"].astype(np.float64)
        keep = (boxes["t"] > self.skip_us) & (w**2 + h**2 >= self.min_diag**2) & (w >= self.min_side)
        return boxes[keep & (h >= self.min_side)]


GEN1_FILTER = BoxFilter()
