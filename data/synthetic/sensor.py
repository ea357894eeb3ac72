"""An event sensor model: log-intensity frames in, time-ordered events out.

Each pixel keeps a reference log intensity and emits an ON (OFF) event whenever the signal rises (falls) by its own
contrast threshold from it; thresholds vary from pixel to pixel (mismatch). Between two rendered frames the signal is
taken as linear in time, so every threshold crossing gets its own sub-frame timestamp. After an event a pixel is
blind for a refractory period. Shot noise (random events at a low rate everywhere) and a few hot pixels firing at a
high rate are added. All of it is vectorised over the pixels that change, so cost follows scene activity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from data.events import empty_events


@dataclass(frozen=True)
class SensorConfig:
    """Pixel behaviour and noise (the geometry is the rendered frames'). Thresholds are in log-intensity units."""

    frame_rate_hz: float = 200.0  # rendering rate; event times are interpolated between frames
    threshold_on: float = 0.22
    threshold_off: float = 0.24
    threshold_mismatch: float = 0.03  # per-pixel standard deviation of both thresholds
    threshold_floor: float = 0.08  # no pixel is more sensitive than this
    refractory_us: float = 500.0
    shot_noise_hz: float = 0.2  # background events per pixel per second
    hot_pixels: int = 4
    hot_pixel_hz: float = 150.0  # events per second of each hot pixel
    chunk_frames: int = 10  # frames per yielded, time-sorted chunk


class EventSensor:
    """Per-pixel state (reference level, last event time, thresholds) and the step from one frame to the next."""

    def __init__(self, config: SensorConfig, rng: np.random.Generator, first_frame: np.ndarray) -> None:
        self.config = config
        self._rng = rng
        self.height, self.width = first_frame.shape
        n = first_frame.size
        mismatch = config.threshold_mismatch
        self._c_on = np.maximum(rng.normal(config.threshold_on, mismatch, n), config.threshold_floor).astype(np.float32)
        self._c_off = np.maximum(rng.normal(config.threshold_off, mismatch, n), config.threshold_floor).astype(
            np.float32
        )
        self._prev = first_frame.astype(np.float32).ravel()  # [H·W]
        # A random starting reference strictly within the thresholds, so pixels do not fire in lockstep.
        spread = rng.uniform(0.01, 0.99, n).astype(np.float32)
        self._ref = self._prev - (spread * (self._c_on + self._c_off) - self._c_off)
        self._last = np.full(n, -1e18)  # µs of each pixel's last event (float64)
        self._hot = rng.choice(n, size=min(config.hot_pixels, n), replace=False)

    def step(self, frame: np.ndarray, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Events between the previous frame (at ``t0``) and ``frame`` (at ``t1``): ``(t µs float, pixel, p)``.

        Not sorted by time: a chunk is sorted once, after noise is added.
        """
        now = frame.astype(np.float32, copy=False).ravel()
        before, self._prev = self._prev, now.copy()
        diff = now - self._ref
        active = np.flatnonzero((diff >= self._c_on) | (diff <= -self._c_off))
        if active.size == 0:
            return np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int8)
        d = diff[active]
        on = d > 0
        c = np.where(on, self._c_on[active], self._c_off[active])
        n = np.floor(np.abs(d) / c).astype(np.int64)  # crossings this frame, >= 1
        ref = self._ref[active]
        sign = np.where(on, 1.0, -1.0).astype(np.float32)
        slope = np.maximum(np.abs(now[active] - before[active]), 1e-6)  # log units per frame interval
        # Crossing k (1..n) of level ref + sign·k·c happens at fraction (sign·(ref - before) + k·c) / slope.
        first = np.clip((sign * (ref - before[active]) + c) / slope, 1e-6, 1.0).astype(np.float64)
        spacing = (c / slope).astype(np.float64)  # float64 from here on: µs at 60 s need more than float32
        dt = t1 - t0
        t_first = t0 + first * dt
        step_us = spacing * dt
        # Refractory period: skip crossings until it has passed since the pixel's last event, then keep every
        # m-th crossing where m·spacing covers it (the crossings of one frame are evenly spaced).
        # Half a µs of slack keeps a crossing that lands on the end of the period despite float32 rounding.
        refractory = self.config.refractory_us - 0.5
        k_first = 1 + np.maximum(np.ceil((self._last[active] + refractory - t_first) / step_us), 0).astype(np.int64)
        every = np.maximum(np.ceil(refractory / step_us), 1).astype(np.int64)
        kept = np.where(k_first <= n, (n - k_first) // every + 1, 0)
        self._ref[active] = ref + sign * n * c  # the pixel resets even while blind: blind-time change is lost
        owner = np.repeat(np.arange(active.size), kept)  # [E] index into `active` of each emitted event
        rank = np.arange(owner.size) - np.repeat(np.cumsum(kept) - kept, kept)
        k = k_first[owner] + rank * every[owner]
        times = np.minimum(t_first[owner] + (k - 1) * step_us[owner], t1)  # rounding may overshoot by ~1e-9
        fired = kept > 0
        self._last[active[fired]] = (t_first + (k_first + (kept - 1) * every - 1) * step_us)[fired]
        return times, active[owner], on[owner].astype(np.int8)

    def noise(self, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Shot noise over the whole array and hot-pixel events in ``[t0, t1)``: ``(t µs float, pixel, p)``."""
        cfg, rng = self.config, self._rng
        seconds = (t1 - t0) / 1e6
        shots = rng.poisson(cfg.shot_noise_hz * self.width * self.height * seconds)
        hot_counts = rng.poisson(cfg.hot_pixel_hz * seconds, size=self._hot.size)
        pixels = np.concatenate((rng.integers(0, self.width * self.height, shots), np.repeat(self._hot, hot_counts)))
        times = rng.uniform(t0, t1, pixels.size)
        return times, pixels, rng.integers(0, 2, pixels.size).astype(np.int8)


def simulate(
    render: Callable[[float], np.ndarray], duration_us: float, config: SensorConfig, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Run the sensor over ``render(t)`` frames for ``[0, duration_us]``; yields time-ordered event chunks.

    ``render`` returns an ``[H, W]`` log-intensity frame for a time in µs. Timestamps are whole µs (floored).
    """
    period = 1e6 / config.frame_rate_hz
    frames = math.ceil(duration_us / period)
    sensor = EventSensor(config, rng, render(0.0))
    for start in range(0, frames, config.chunk_frames):
        stop = min(start + config.chunk_frames, frames)
        parts = []
        for i in range(start, stop):
            t0, t1 = i * period, min((i + 1) * period, duration_us)
            parts.append(sensor.step(render(t1), t0, t1))
        parts.append(sensor.noise(start * period, min(stop * period, duration_us)))
        times = np.concatenate([p[0] for p in parts])
        order = np.argsort(times, kind="stable")
        pixels = np.concatenate([p[1] for p in parts])[order]
        chunk = empty_events(order.size)
        chunk["t"] = np.floor(times[order])
        chunk["x"] = pixels % sensor.width
        chunk["y"] = pixels // sensor.width
        chunk["p"] = np.concatenate([p[2] for p in parts])[order]
        yield chunk
