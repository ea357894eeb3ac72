"""Training augmentations: geometry that moves events and boxes together (horizontal flip, zoom-in crop), and the
imperfections of a real sensor that change the events alone (refractory period, lost events, timestamp jitter,
background noise), made by tonic's event functions.

Parameters are drawn once per recording pass (so a stream keeps its geometry and its sensor's character over time)
and applied to every window of that pass. The per-event randomness of the sensor imperfections is seeded per window
from the pass's draw, so a window's events do not depend on which process builds it, or when.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from data.events import EVENT_DTYPE
from data.geometry import clip_boxes


@dataclass(frozen=True)
class SensorParams:
    """One pass's sensor imperfections (all 0: none) and the seed of its windows' per-event randomness.

    Calling it on a window's events applies, in this order and with tonic's functions: the refractory period
    (``refractory_period_numpy``; a pixel's memory starts fresh in every window), dropped events
    (``drop_event_numpy``), Gaussian timestamp jitter (``time_jitter_numpy``, re-sorted) and uniform background noise
    (``uniform_noise_numpy``, at ``uniform_noise_hz`` events per input pixel and second, spread over the time span of
    the window's events; none in an empty window). Events pushed out of the window by the jitter are dropped.
    """

    refractory_us: int = 0
    drop_event: float = 0.0
    time_jitter_us: float = 0.0
    uniform_noise_hz: float = 0.0
    seed: int = 0

    def __call__(self, events: np.ndarray, t_start: int, window_us: int, width: int, height: int) -> np.ndarray:
        """The events of the window ``[t_start, t_start + window_us)`` on a ``width`` × ``height`` input, altered;
        sorted by time."""
        noise = round(self.uniform_noise_hz * width * height * window_us / 1e6)
        if not len(events) or not (self.refractory_us or self.drop_event or self.time_jitter_us or noise):
            return events
        import tonic.functional as tonic  # lazy: tonic imports torch, and only training with these on needs it

        with _global_numpy_seed(self.seed, t_start):
            if self.refractory_us:
                events = tonic.refractory_period_numpy(events, self.refractory_us)
            if self.drop_event and len(events):
                events = tonic.drop_event_numpy(events, self.drop_event)
            if self.time_jitter_us and len(events):
                # tonic jitters in place: work on a copy, never on the reader's array
                events = tonic.time_jitter_numpy(events.copy(), self.time_jitter_us, sort_timestamps=True)
            if noise and len(events):
                events = tonic.uniform_noise_numpy(events, (width, height, 2), noise)
        t, x, y = events["t"], events["x"], events["y"]
        # the jitter may leave the window; numpy's uniform may (rarely) return its upper bound
        on_window = (t >= t_start) & (t < t_start + window_us) & (x < width) & (y < height)
        return events[on_window].astype(EVENT_DTYPE, copy=False)  # tonic's concatenation drops the aligned layout


@contextmanager
def _global_numpy_seed(*key: int) -> Iterator[None]:
    # tonic draws from numpy's global generator: seeding it per window (and restoring it afterwards) makes the draws a
    # function of the window alone, the same in a DataLoader worker as in the training process
    saved = np.random.get_state()
    np.random.seed(np.random.SeedSequence(key).generate_state(8))
    try:
        yield
    finally:
        np.random.set_state(saved)


@dataclass(frozen=True)
class SensorAugmentation:
    """How to draw :class:`SensorParams`: each magnitude uniformly in ``[0, its maximum]`` per pass (0 = off).

    The field names are the training config's keys, so that an error names the key to fix.
    """

    refractory_us: int = 0
    drop_event: float = 0.0
    time_jitter_us: float = 0.0
    uniform_noise_hz: float = 0.0

    def __post_init__(self) -> None:
        integral = isinstance(self.refractory_us, int | np.integer) and not isinstance(self.refractory_us, bool)
        if not integral or self.refractory_us < 0:
            raise ValueError(f"refractory_us must be an integer >= 0 (µs), got {self.refractory_us!r}")
        if not 0 <= self.drop_event < 1:
            raise ValueError(f"drop_event must lie in [0, 1) (a share of the events), got {self.drop_event!r}")
        for name in ("time_jitter_us", "uniform_noise_hz"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    @property
    def enabled(self) -> bool:
        """Whether any imperfection can be drawn."""
        return bool(self.refractory_us or self.drop_event or self.time_jitter_us or self.uniform_noise_hz)

    def sample(self, rng: np.random.Generator) -> SensorParams:
        """Draw one pass's magnitudes and the seed of its windows."""
        return SensorParams(
            refractory_us=int(rng.integers(0, self.refractory_us, endpoint=True)),
            drop_event=float(rng.uniform(0, self.drop_event)),
            time_jitter_us=float(rng.uniform(0, self.time_jitter_us)),
            uniform_noise_hz=float(rng.uniform(0, self.uniform_noise_hz)),
            seed=int(rng.integers(2**63)),
        )


@dataclass(frozen=True)
class AugmentParams:
    """One draw: flip or not, zoom factor (>= 1), the zoom centre in input pixels, and the sensor imperfections."""

    flip: bool = False
    zoom: float = 1.0
    cx: float = 0.0
    cy: float = 0.0
    sensor: SensorParams = SensorParams()


@dataclass(frozen=True)
class Augmentation:
    """How to draw :class:`AugmentParams` (``flip_prob``; zoom in by up to ``max_zoom`` with ``zoom_prob``; the
    ``sensor`` imperfections)."""

    flip_prob: float = 0.5
    zoom_prob: float = 0.5
    max_zoom: float = 1.5
    sensor: SensorAugmentation = SensorAugmentation()

    def __post_init__(self) -> None:
        if not (0 <= self.flip_prob <= 1 and 0 <= self.zoom_prob <= 1):
            raise ValueError("flip_prob and zoom_prob must lie in [0, 1]")
        if self.max_zoom < 1:
            raise ValueError(f"max_zoom must be >= 1, got {self.max_zoom}")

    def sample(self, rng: np.random.Generator, width: int, height: int) -> AugmentParams:
        """Draw parameters for an input of ``width`` × ``height``."""
        flip = bool(rng.random() < self.flip_prob)
        zoomed = rng.random() < self.zoom_prob and self.max_zoom > 1
        zoom, cx, cy = 1.0, width / 2, height / 2
        if zoomed:
            zoom = float(rng.uniform(1.0, self.max_zoom))
            # the centre is chosen so that the zoomed view stays inside the frame
            half_w, half_h = width / (2 * zoom), height / (2 * zoom)
            cx, cy = float(rng.uniform(half_w, width - half_w)), float(rng.uniform(half_h, height - half_h))
        # nothing drawn when off: the plans (and batches) of a run without sensor imperfections stay as they were
        sensor = self.sensor.sample(rng) if self.sensor.enabled else SensorParams()
        return AugmentParams(flip, zoom, cx, cy, sensor)


def augment_events(events: np.ndarray, params: AugmentParams, width: int, height: int) -> np.ndarray:
    """Events after zoom (about the centre, off-frame events dropped) and flip."""
    if not len(events) or (not params.flip and params.zoom == 1.0):
        return events
    x = events["x"].astype(np.float64)
    y = events["y"].astype(np.float64)
    if params.zoom != 1.0:
        x = np.floor((x + 0.5 - params.cx) * params.zoom + width / 2)
        y = np.floor((y + 0.5 - params.cy) * params.zoom + height / 2)
    if params.flip:
        x = width - 1 - x
    keep = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    out = np.empty(int(keep.sum()), dtype=EVENT_DTYPE)
    out["t"], out["p"], out["x"], out["y"] = events["t"][keep], events["p"][keep], x[keep], y[keep]
    return out


def augment_boxes(boxes: np.ndarray, params: AugmentParams, width: int, height: int) -> np.ndarray:
    """Boxes (label dtype) moved exactly as :func:`augment_events` moves events, clipped to the frame."""
    if not len(boxes) or (not params.flip and params.zoom == 1.0):
        return boxes
    out = boxes.copy()
    if params.zoom != 1.0:
        out["x"] = (boxes["x"] - params.cx) * params.zoom + width / 2
        out["y"] = (boxes["y"] - params.cy) * params.zoom + height / 2
        out["w"] = boxes["w"] * params.zoom
        out["h"] = boxes["h"] * params.zoom
    if params.flip:
        out["x"] = width - out["x"] - out["w"]
    return clip_boxes(out, width, height)
