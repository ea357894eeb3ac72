"""A street seen by a fixed (or slowly swaying) camera, rendered in log intensity.

The scene is a textured background (sky, buildings with windows, trees, poles, road with lane markings, sidewalk)
and objects on tracks: cars with windows and turning wheels, pedestrians with swinging limbs. Each object has a
depth that sets its size and its ground line, moves laterally across the street at its own speed and direction,
may stop for a while and go on, and enters and leaves the frame. Nearer objects occlude farther ones.

Everything is in log-intensity units (what an event pixel responds to) and screen pixels (x right, y down);
times are microseconds. Rendering is sub-pixel exact: sprites are rendered once, supersampled, and shifted
bilinearly, so an edge moving 0.2 px per frame changes the pixels it crosses gradually.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

CAR, PEDESTRIAN = 0, 1  # Gen1 class ids


@dataclass(frozen=True)
class SceneConfig:
    """What happens in the street. Speeds are screen px/s at depth 1 (an object at depth z moves speed/z)."""

    width: int = 304
    height: int = 240
    horizon: float = 0.4  # horizon row as a fraction of the frame height
    car_rate_hz: float = 0.8  # new cars per second (Poisson arrivals)
    pedestrian_rate_hz: float = 0.3
    car_depth: tuple[float, float] = (1.3, 9.0)  # nearest and farthest car; 9 gives boxes below the Gen1 filter
    pedestrian_depth: tuple[float, float] = (1.25, 8.0)
    car_speed: tuple[float, float] = (120.0, 330.0)
    pedestrian_speed: tuple[float, float] = (45.0, 95.0)
    stop_probability: float = 0.3  # chance that an object stops once while in view
    stop_duration_s: tuple[float, float] = (1.0, 5.0)
    object_contrast: tuple[float, float] = (0.35, 1.2)  # |log intensity| of bodies relative to the street
    texture_contrast: float = 0.15  # amplitude of fine background texture (log units)
    ego_amplitude_px: float = 0.0  # camera sway amplitude; 0 is a fixed camera
    ego_period_s: float = 25.0
    supersample: int = 3  # sprite anti-aliasing factor


@dataclass(frozen=True)
class Sprite:
    """An object's appearance: ``K`` animation poses, pre-rendered with anti-aliased edges.

    Attributes:
        layers: ``[K, 2, h, w]`` float32: coverage × log intensity (premultiplied, so bilinear shifts stay exact)
            and coverage in [0, 1]. The outermost row and column on every side are empty.
        extent: ``[K, 4]`` tight ``(x0, y0, x1, y1)`` of each pose in sprite pixels (x1, y1 exclusive).
    """

    layers: np.ndarray
    extent: np.ndarray

    @property
    def poses(self) -> int:
        return self.layers.shape[0]

    @property
    def alpha(self) -> np.ndarray:
        """``[K, h, w]`` coverage."""
        return self.layers[:, 1]


@dataclass(frozen=True, eq=False)
class Track:
    """One object's path: sprite top-left ``(x0 + direction·s(t), y0)`` in world pixels.

    ``s(t)`` (pixels travelled) is tabulated on ``t_grid`` so stops and speed changes integrate exactly once.
    """

    track_id: int
    class_id: int
    depth: float
    sprite: Sprite
    x0: float
    y0: float
    direction: int  # +1 moves right, -1 left
    cycle_px: float  # distance per animation cycle (a stride, or a wheel turn between spokes)
    t_grid: np.ndarray  # [G] µs
    s_grid: np.ndarray  # [G] px travelled
    t_in: float  # spawn time, just outside the frame (µs)
    t_out: float  # time it is past the other edge

    def travelled(self, t: float) -> float:
        """Pixels travelled at time ``t``."""
        return float(np.interp(t, self.t_grid, self.s_grid))


@dataclass(frozen=True)
class Placement:
    """Where a track is on screen at one instant: sprite top-left ``(x, y)`` and animation phase in [0, K)."""

    track: Track
    x: float
    y: float
    phase: float

    def pose(self) -> int:
        """The nearest animation pose."""
        return round(self.phase) % self.track.sprite.poses

    def box(self) -> tuple[float, float, float, float]:
        """The object's tight box ``(x0, y0, x1, y1)`` on screen, unclipped."""
        ex0, ey0, ex1, ey1 = self.track.sprite.extent[self.pose()]
        return self.x + ex0, self.y + ey0, self.x + ex1, self.y + ey1


class StreetScene:
    """A seeded street: background, tracks over ``[0, duration_us]``, camera motion; ``render(t)`` gives a frame."""

    def __init__(self, config: SceneConfig, rng: np.random.Generator, duration_us: float) -> None:
        self.config = config
        self.duration_us = duration_us
        self.horizon = config.horizon * config.height
        self._margin = math.ceil(config.ego_amplitude_px) + 2
        self._ego_phase = rng.uniform(0, 2 * math.pi, size=2)
        self.background = _street_background(config, rng, self._margin, self.horizon)  # [H+2m, W+2m]
        self.tracks = _make_tracks(config, rng, duration_us, self.ground_row, self._margin)
        self._t_in = np.array([tr.t_in for tr in self.tracks])
        self._t_out = np.array([tr.t_out for tr in self.tracks])

    def ground_row(self, depth: float) -> float:
        """Screen row where the ground at ``depth`` meets objects standing on it (depth 1.15 is the bottom row)."""
        return self.horizon + (self.config.height - self.horizon) * 1.15 / depth

    def camera(self, t: float) -> tuple[float, float]:
        """Camera offset (px) at ``t``: a slow sway, mostly horizontal."""
        a = self.config.ego_amplitude_px
        if a == 0:
            return 0.0, 0.0
        w = 2 * math.pi * t / (self.config.ego_period_s * 1e6)
        return a * math.sin(w + self._ego_phase[0]), 0.3 * a * math.sin(1.7 * w + self._ego_phase[1])

    def placements(self, t: float) -> list[Placement]:
        """Objects possibly in view at ``t``, farthest first (the order to paint and to resolve occlusion)."""
        cx, cy = self.camera(t)
        out = []
        for i in np.flatnonzero((self._t_in <= t) & (self._t_out >= t)):
            tr = self.tracks[i]
            s = tr.travelled(t)
            phase = (s / tr.cycle_px * tr.sprite.poses) % tr.sprite.poses
            out.append(Placement(tr, tr.x0 + tr.direction * s - cx, tr.y0 - cy, phase))
        out.sort(key=lambda p: -p.track.depth)
        return out

    def render(self, t: float) -> np.ndarray:
        """The log-intensity frame at ``t`` (µs): ``[H, W]`` float32."""
        cx, cy = self.camera(t)
        frame = _sample(self.background, self._margin + cx, self._margin + cy, self.config.height, self.config.width)
        for p in self.placements(t):
            sprite = p.track.sprite
            k0 = int(p.phase)
            k1 = (k0 + 1) % sprite.poses
            w = np.float32(p.phase - k0)
            _composite(frame, sprite.layers[k0] + w * (sprite.layers[k1] - sprite.layers[k0]), p.x, p.y)
        return frame


# --- rendering primitives ------------------------------------------------------------------------------------------


def _sample(image: np.ndarray, x: float, y: float, height: int, width: int) -> np.ndarray:
    """Bilinear crop of ``image`` with top-left at fractional ``(x, y)``: ``[height, width]``."""
    ix, iy = math.floor(x), math.floor(y)
    fx, fy = np.float32(x - ix), np.float32(y - iy)
    if fx == 0 and fy == 0:
        return image[iy : iy + height, ix : ix + width].copy()
    top = image[iy : iy + height, ix : ix + width + 1]
    bottom = image[iy + 1 : iy + 1 + height, ix : ix + width + 1]
    rows = top + fy * (bottom - top)  # [height, width+1]
    return rows[:, :-1] + fx * (rows[:, 1:] - rows[:, :-1])


def _composite(frame: np.ndarray, layers: np.ndarray, x: float, y: float) -> None:
    """Paint a sprite's ``[2, h, w]`` (premultiplied, coverage) over ``frame`` in place, top-left at ``(x, y)``."""
    _, h, w = layers.shape
    ix, iy = math.floor(x), math.floor(y)
    fx, fy = np.float32(x - ix), np.float32(y - iy)
    # Shifting right/down by a fraction mixes each pixel with its left/upper neighbour. The sprite's empty border
    # absorbs the shift, so only sprite rows/columns 1.. are computed, and only those that land on the frame.
    r0, r1 = max(1, -iy), min(h, frame.shape[0] - iy)
    c0, c1 = max(1, -ix), min(w, frame.shape[1] - ix)
    if r0 >= r1 or c0 >= c1:
        return
    here, above = layers[:, r0:r1, c0 - 1 : c1], layers[:, r0 - 1 : r1 - 1, c0 - 1 : c1]
    rows = here + fy * (above - here)  # [2, r1-r0, c1-c0+1]
    shifted = rows[:, :, 1:] + fx * (rows[:, :, :-1] - rows[:, :, 1:])  # [2, r1-r0, c1-c0]
    region = frame[iy + r0 : iy + r1, ix + c0 : ix + c1]
    region *= 1 - shifted[1]
    region += shifted[0]


class _Painter:
    """Supersampled painter's canvas for one sprite: primitives paint in order, then average down to pixels."""

    def __init__(self, width: int, height: int, ss: int) -> None:
        self.ss, self.width, self.height = ss, width, height
        coords_x = (np.arange(width * ss, dtype=np.float32) + 0.5) / ss
        coords_y = (np.arange(height * ss, dtype=np.float32) + 0.5) / ss
        self.xs, self.ys = np.meshgrid(coords_x, coords_y)  # [h·ss, w·ss] pixel coordinates of the subsamples
        self.clear()

    def paint(self, mask: np.ndarray, value: float | np.ndarray) -> None:
        self.value = np.where(mask, value, self.value)
        self.cover |= mask

    def clear(self) -> None:
        self.value = np.zeros_like(self.xs)
        self.cover = np.zeros(self.xs.shape, bool)

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        return self.value.copy(), self.cover.copy()

    def restore(self, state: tuple[np.ndarray, np.ndarray]) -> None:
        self.value, self.cover = state[0].copy(), state[1].copy()

    def pixels(self) -> tuple[np.ndarray, np.ndarray]:
        """``(premul, alpha)``, each ``[h, w]`` float32."""
        shape = (self.height, self.ss, self.width, self.ss)
        alpha = self.cover.reshape(shape).mean(axis=(1, 3), dtype=np.float32)
        premul = np.where(self.cover, self.value, 0).reshape(shape).mean(axis=(1, 3), dtype=np.float32)
        return premul, alpha

    def box(self, x0: float, y0: float, x1: float, y1: float, radius: float = 0.0) -> np.ndarray:
        dx = np.maximum(np.maximum(x0 + radius - self.xs, self.xs - (x1 - radius)), 0)
        dy = np.maximum(np.maximum(y0 + radius - self.ys, self.ys - (y1 - radius)), 0)
        inside = (x0 <= self.xs) & (x1 >= self.xs) & (y0 <= self.ys) & (y1 >= self.ys)
        return inside & (dx * dx + dy * dy <= radius * radius)

    def disc(self, cx: float, cy: float, r: float) -> np.ndarray:
        return (self.xs - cx) ** 2 + (self.ys - cy) ** 2 <= r * r

    def capsule(self, ax: float, ay: float, bx: float, by: float, r: float) -> np.ndarray:
        """A thick segment from ``a`` to ``b`` with round ends (limbs)."""
        vx, vy = bx - ax, by - ay
        u = np.clip(((self.xs - ax) * vx + (self.ys - ay) * vy) / max(vx * vx + vy * vy, 1e-9), 0, 1)
        return (self.xs - ax - u * vx) ** 2 + (self.ys - ay - u * vy) ** 2 <= r * r

    def trapezoid(self, y0: float, y1: float, top: tuple[float, float], bottom: tuple[float, float]) -> np.ndarray:
        """Rows ``y0..y1``; the left/right edges run linearly from ``top`` (at y0) to ``bottom`` (at y1)."""
        f = (self.ys - y0) / max(y1 - y0, 1e-9)
        left = top[0] + f * (bottom[0] - top[0])
        right = top[1] + f * (bottom[1] - top[1])
        return (y0 <= self.ys) & (y1 >= self.ys) & (left <= self.xs) & (right >= self.xs)

    def grating(self, rng: np.random.Generator, wavelength: tuple[float, float]) -> np.ndarray:
        """A smooth random pattern in [-1, 1] fixed to the sprite (moves with the object)."""
        out = np.zeros_like(self.xs)
        for _ in range(3):
            angle, lam, phase = rng.uniform(0, math.pi), rng.uniform(*wavelength), rng.uniform(0, 2 * math.pi)
            out += np.sin((self.xs * math.cos(angle) + self.ys * math.sin(angle)) * (2 * math.pi / lam) + phase)
        return out / 3


def _finish(poses: list[tuple[np.ndarray, np.ndarray]], flip: bool) -> Sprite:
    # One empty pixel on every side, whatever the drawing did: compositing relies on it.
    layers = np.pad(np.stack([np.stack(p) for p in poses]), ((0, 0), (0, 0), (1, 1), (1, 1)))  # [K, 2, h, w]
    if flip:
        layers = np.ascontiguousarray(layers[..., ::-1])
    extent = np.zeros((len(poses), 4), np.float32)
    for k, a in enumerate(layers[:, 1]):
        rows, cols = np.flatnonzero(a.max(axis=1) > 0.25), np.flatnonzero(a.max(axis=0) > 0.25)
        extent[k] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return Sprite(layers, extent)


def _body_value(rng: np.random.Generator, street: float, contrast: tuple[float, float]) -> float:
    """A body's log intensity: brighter or darker than the street by a contrast drawn from ``contrast``."""
    return street + rng.choice((-1.0, 1.0)) * rng.uniform(*contrast)


def _car_sprite(rng: np.random.Generator, length: float, config: SceneConfig, flip: bool) -> tuple[Sprite, float]:
    """A side-view car facing right, ``poses`` wheel angles; returns the sprite and the px per animation cycle."""
    ss, pad = config.supersample, 2
    height = length * rng.uniform(0.3, 0.42)  # sedans to vans
    r = length * rng.uniform(0.07, 0.085)  # wheel radius
    w, h = math.ceil(length) + 2 * pad, math.ceil(height) + 2 * pad
    pt = _Painter(w, h, ss)
    L, H, x, y = length, height, float(pad), float(pad)  # local frame: car spans [x, x+L] × [y, y+H]
    body = _body_value(rng, -0.3, config.object_contrast)
    paint = body + 0.15 * pt.grating(rng, (4.0, 14.0))  # reflections and dirt on the paint
    belt = y + H * rng.uniform(0.38, 0.5)  # where the cabin meets the body
    cabin_front, cabin_back = rng.uniform(0.68, 0.8), rng.uniform(0.12, 0.25)
    pt.paint(
        pt.trapezoid(
            y,
            belt,
            (x + L * (cabin_back + 0.08), x + L * (cabin_front - 0.1)),
            (x + L * cabin_back, x + L * cabin_front),
        ),
        paint,
    )
    pt.paint(pt.box(x, belt - 0.5, x + L, y + H - 0.6 * r, radius=0.12 * H), paint)
    glass = -1.0 + 0.25 * (pt.ys - y) / max(belt - y, 1)  # darker at the top, sky reflection lower
    inset = max(0.08 * (belt - y), 0.6)
    pillar = x + L * (cabin_back + cabin_front) / 2
    pt.paint(
        pt.trapezoid(
            y + inset,
            belt - inset,
            (x + L * (cabin_back + 0.09) + inset, pillar - 0.02 * L),
            (x + L * cabin_back + 2 * inset, pillar - 0.02 * L),
        ),
        glass,
    )
    pt.paint(
        pt.trapezoid(
            y + inset,
            belt - inset,
            (pillar + 0.02 * L, x + L * (cabin_front - 0.1) - inset),
            (pillar + 0.02 * L, x + L * cabin_front - 2 * inset),
        ),
        glass,
    )
    door_line = body - 0.5 * np.sign(body + 0.3)  # seams contrast with the paint
    for fx in (0.45, 0.64):
        pt.paint(pt.box(x + L * fx, belt + 1, x + L * fx + max(0.006 * L, 0.4), y + H - r * 1.1), door_line)
    pt.paint(pt.box(x + L * 0.5, belt + 0.18 * H, x + L * 0.55, belt + 0.23 * H), door_line)
    pt.paint(pt.box(x + L - 0.035 * L, belt + 0.12 * H, x + L, belt + 0.3 * H, radius=0.01 * L), 1.6)  # headlight
    pt.paint(pt.box(x, belt + 0.12 * H, x + 0.03 * L, belt + 0.3 * H), 0.3)  # tail light
    pt.paint(pt.box(x, y + H - 1.1 * r, x + L, y + H - 0.7 * r), -1.2)  # bumper line / sill shadow
    wheels = [(x + L * 0.19, y + H - r), (x + L * 0.81, y + H - r)]
    for cx, cy in wheels:
        pt.paint(pt.disc(cx, cy, r * 1.18) & (pt.ys < cy), -1.5)  # wheel arch
    base = pt.snapshot()
    spokes = int(rng.integers(4, 7))
    poses = []
    for k in range(6):
        pt.restore(base)
        angle = 2 * math.pi * k / (6 * spokes)  # 6 poses span the turn from one spoke to the next
        for cx, cy in wheels:
            pt.paint(pt.disc(cx, cy, r), -1.7)  # tyre
            rim = pt.disc(cx, cy, 0.62 * r)
            theta = np.arctan2(pt.ys - cy, pt.xs - cx)
            spoke = np.cos(spokes * (theta - angle)) > 0.3
            pt.paint(rim, np.where(spoke, 0.5, -0.6))
            pt.paint(pt.disc(cx, cy, 0.18 * r), 0.2)
        poses.append(pt.pixels())
    return _finish(poses, flip), 2 * math.pi * r / spokes


def _pedestrian_sprite(
    rng: np.random.Generator, height: float, config: SceneConfig, flip: bool
) -> tuple[Sprite, float]:
    """A walking person facing right, 12 poses over one gait cycle; returns the sprite and the stride cycle (px)."""
    ss, pad = config.supersample, 2
    H = height
    w, h = math.ceil(0.62 * H) + 2 * pad, math.ceil(H) + 2 * pad
    pt = _Painter(w, h, ss)
    cx, top = w / 2, float(pad)
    shirt = _body_value(rng, -0.3, config.object_contrast)
    trousers = _body_value(rng, -0.3, config.object_contrast)
    skin = rng.uniform(-0.2, 0.6)
    shirt_tex = shirt + 0.2 * pt.grating(rng, (2.0, 6.0))
    limb = 0.045 * H
    hip_y, shoulder_y = top + 0.52 * H, top + 0.19 * H
    thigh, shin, upper, fore = 0.25 * H, 0.245 * H, 0.18 * H, 0.17 * H
    bag = rng.random() < 0.3
    poses = []
    for k in range(12):
        phase = 2 * math.pi * k / 12
        pt.clear()
        bob = 0.012 * H * math.cos(2 * phase)  # the body rises twice per cycle
        for side, shade in ((1, -0.25), (-1, 0.0)):  # far limbs first, slightly darker
            swing = side * math.sin(phase)
            hip_angle = 0.45 * swing
            knee_angle = hip_angle - 0.6 * max(0.0, -side * math.cos(phase))  # knee bends while the leg swings
            kx, ky = cx + thigh * math.sin(hip_angle), hip_y + bob + thigh * math.cos(hip_angle)
            fx, fy = kx + shin * math.sin(knee_angle), ky + shin * math.cos(knee_angle)
            pt.paint(pt.capsule(cx, hip_y + bob, kx, ky, limb * 1.15), trousers + shade)
            pt.paint(pt.capsule(kx, ky, fx, fy, limb), trousers + shade)
            pt.paint(pt.capsule(fx - 0.01 * H, fy, fx + 0.06 * H, fy, 0.025 * H), -1.4)  # shoe
            if side == 1:  # the far arm goes behind the torso
                _arm(pt, cx, shoulder_y + bob, -swing, upper, fore, limb * 0.9, shirt + shade, skin + shade)
        pt.paint(
            pt.box(cx - 0.11 * H, shoulder_y - 0.03 * H + bob, cx + 0.11 * H, hip_y + 0.04 * H + bob, radius=0.04 * H),
            shirt_tex,
        )
        _arm(pt, cx, shoulder_y + bob, math.sin(phase), upper, fore, limb * 0.9, shirt, skin)
        if bag:
            pt.paint(
                pt.box(
                    cx - 0.2 * H, shoulder_y + 0.03 * H + bob, cx - 0.09 * H, hip_y - 0.05 * H + bob, radius=0.02 * H
                ),
                -1.0,
            )
        pt.paint(pt.disc(cx + 0.01 * H, top + 0.075 * H + bob, 0.068 * H), skin)
        pt.paint(pt.disc(cx - 0.005 * H, top + 0.06 * H + bob, 0.062 * H) & (pt.ys < top + 0.07 * H + bob), -1.1)
        poses.append(pt.pixels())
    return _finish(poses, flip), 1.3 * H


def _arm(
    pt: _Painter, sx: float, sy: float, swing: float, upper: float, fore: float, r: float, sleeve: float, skin: float
) -> None:
    ex, ey = sx + upper * math.sin(0.5 * swing), sy + upper * math.cos(0.5 * swing)
    bend = 0.5 * swing + 0.35 * max(0.0, swing)  # the elbow bends on the forward swing
    hx, hy = ex + fore * math.sin(bend), ey + fore * math.cos(bend)
    pt.paint(pt.capsule(sx, sy, ex, ey, r), sleeve)
    pt.paint(pt.capsule(ex, ey, hx, hy, r * 0.9), skin)


# --- tracks --------------------------------------------------------------------------------------------------------


def _make_tracks(
    config: SceneConfig, rng: np.random.Generator, duration_us: float, ground_row: Callable[[float], float], margin: int
) -> list[Track]:
    """Poisson arrivals of cars and pedestrians; arrivals before t=0 populate the street at the start."""
    tracks: list[Track] = []
    for class_id, rate in ((CAR, config.car_rate_hz), (PEDESTRIAN, config.pedestrian_rate_hz)):
        speeds, depths = _ranges(config, class_id)
        slowest = speeds[0] / depths[1]  # px/s
        pre_roll = (config.width + 2 * margin) / slowest * 1e6 * 0.6  # most tracks that span t=0 start in here
        n = rng.poisson(rate * (duration_us + pre_roll) / 1e6)
        for t_spawn in np.sort(rng.uniform(-pre_roll, duration_us, n)):
            track = _make_track(config, rng, class_id, float(t_spawn), duration_us, ground_row, margin, len(tracks))
            if track is not None:
                tracks.append(track)
    return tracks


def _ranges(config: SceneConfig, class_id: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """(speed range, depth range) of a class."""
    if class_id == CAR:
        return config.car_speed, config.car_depth
    return config.pedestrian_speed, config.pedestrian_depth


def _make_track(
    config: SceneConfig,
    rng: np.random.Generator,
    class_id: int,
    t_spawn: float,
    duration_us: float,
    ground_row: Callable[[float], float],
    margin: int,
    track_id: int,
) -> Track | None:
    """A track spawned just outside the frame at ``t_spawn``; None if it is gone before 0 or starts after the end."""
    speed_range, depth_range = _ranges(config, class_id)
    # Uniform in inverse depth: near objects are rarer than far ones, as on a real street.
    depth = 1 / rng.uniform(1 / depth_range[1], 1 / depth_range[0])
    direction = int(rng.choice((-1, 1)))
    speed = rng.uniform(*speed_range) / depth  # px/s on screen
    size = (rng.uniform(150, 195) if class_id == CAR else rng.uniform(115, 140)) / depth
    span = size * (1.0 if class_id == CAR else 0.62) + 7  # sprite width incl. its empty border, give or take 1
    travel = config.width + 2 * margin + span + 4  # from just outside one edge to just outside the other
    wander = rng.uniform(0.1, 0.2) if class_id == PEDESTRIAN else rng.uniform(0.03, 0.08)
    stops = []
    if rng.random() < config.stop_probability:
        at = rng.uniform(0.3, 0.8) * travel  # where the stop happens: well inside the frame
        stops.append((t_spawn + at / speed * 1e6, rng.uniform(*config.stop_duration_s) * 1e6))
    ramp = (0.8 if class_id == CAR else 0.3) * 1e6
    lifetime = travel / (speed * (1 - wander)) * 1e6 + sum(d for _, d in stops) + 2 * ramp * len(stops) + 1e6
    if t_spawn + lifetime < 0 or t_spawn > duration_us:
        return None
    step = 10_000.0  # 10 ms grid: fine enough for smooth speed changes, linear in between
    t_grid = t_spawn + np.arange(int(lifetime / step) + 2) * step
    gate = np.ones_like(t_grid)
    for start, dur in stops:  # 1 while cruising, ramps down to 0 over `ramp` before the stop and back after it
        up = np.clip(np.maximum((start - t_grid) / ramp, (t_grid - start - dur) / ramp), 0, 1)
        gate = np.minimum(gate, up)
    wobble = 1 + wander * np.sin(2 * math.pi * (t_grid - t_spawn) / rng.uniform(3e6, 8e6) + rng.uniform(0, 6.3))
    v = speed * gate * wobble / 1e6  # px/µs
    s_grid = np.concatenate(([0.0], np.cumsum((v[1:] + v[:-1]) / 2 * step)))
    s_grid = s_grid[: np.searchsorted(s_grid, travel) + 1]
    t_grid = t_grid[: len(s_grid)]
    if t_grid[-1] < 0:
        return None
    make = _car_sprite if class_id == CAR else _pedestrian_sprite
    sprite, cycle = make(rng, size, config, flip=direction < 0)
    sprite_w = sprite.alpha.shape[2]
    x0 = -margin - sprite_w - 1.0 if direction > 0 else config.width + margin + 1.0
    # Sprite rows: padding (2) + object height; its last object row stands on the ground line of its depth.
    y0 = ground_row(depth) - sprite.extent[0][3]
    return Track(
        track_id, class_id, depth, sprite, x0, y0, direction, cycle, t_grid, s_grid, float(t_grid[0]), float(t_grid[-1])
    )


# --- background ----------------------------------------------------------------------------------------------------


def _value_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth random field in about [-1, 1]: lattice values every ``cell`` px, smoothstep-interpolated."""
    h, w = shape
    lattice = rng.uniform(-1, 1, (int(h / cell) + 2, int(w / cell) + 2)).astype(np.float32)
    ys, xs = np.arange(h) / cell, np.arange(w) / cell
    iy, ix = ys.astype(int), xs.astype(int)
    fy, fx = ys - iy, xs - ix
    fy, fx = (fy * fy * (3 - 2 * fy))[:, None], (fx * fx * (3 - 2 * fx))[None, :]
    a, b = lattice[iy][:, ix], lattice[iy][:, ix + 1]
    c, d = lattice[iy + 1][:, ix], lattice[iy + 1][:, ix + 1]
    return ((a + (b - a) * fx) * (1 - fy) + (c + (d - c) * fx) * fy).astype(np.float32)


def _fractal_noise(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return sum(0.5**i * _value_noise(rng, shape, cell) for i, cell in enumerate((24.0, 9.0, 3.5, 1.5)))


def _street_background(config: SceneConfig, rng: np.random.Generator, margin: int, horizon: float) -> np.ndarray:
    """The static street in log intensity, ``margin`` px larger than the frame on every side for camera sway."""
    H, W = config.height + 2 * margin, config.width + 2 * margin
    hz = round(horizon) + margin  # horizon row in background coordinates
    Y, X = np.mgrid[0:H, 0:W].astype(np.float32)
    img = 1.1 - 0.4 * Y / hz  # sky: brighter at the top
    img += 0.06 * _value_noise(rng, (H, W), 40.0)  # clouds

    x = -int(rng.integers(0, 30))
    while x < W:  # a row of buildings with window grids
        bw = int(rng.integers(28, 85))
        top = int(rng.uniform(0.05 * H, hz - 12))
        facade = rng.uniform(-0.7, 0.5)
        img[top:hz, max(x, 0) : x + bw] = facade
        img[top : top + 2, max(x, 0) : x + bw] = facade - 0.4  # roof ledge
        cw, ch = int(rng.integers(6, 11)), int(rng.integers(8, 13))
        lit = rng.random((H // ch + 1, bw // cw + 1))
        for r, wy in enumerate(range(top + 5, hz - ch, ch)):
            for c, wx in enumerate(range(x + 3, x + bw - cw + 1, cw)):
                if wx >= 0:
                    value = 0.9 if lit[r, c] < 0.2 else -1.2 + 0.3 * lit[r, c]
                    img[wy : wy + int(ch * 0.6), wx : wx + int(cw * 0.6)] = value
        x += bw + int(rng.integers(0, 12))

    for _ in range(int(rng.integers(2, 5))):  # trees: a textured canopy on a trunk
        tx, ty, r = rng.uniform(0, W), rng.uniform(hz - 55, hz - 25), rng.uniform(12, 24)
        img[int(ty) : hz + 6, int(tx) - 2 : int(tx) + 2] = -1.0
        d = np.hypot(X - tx, (Y - ty) * 1.2) / r + 0.35 * _value_noise(rng, (H, W), 4.0)
        canopy = d < 1
        img[canopy] = -0.6 + 0.45 * _value_noise(rng, (H, W), 2.0)[canopy]
    for _ in range(int(rng.integers(2, 5))):  # lamp posts
        px, h = int(rng.uniform(0, W)), int(rng.uniform(50, 85))
        img[hz - h : hz + 10, px : px + 2] = -1.1
        img[hz - h : hz - h + 2, px - 6 : px + 2] = -1.1

    ground = np.float32(config.height - horizon)
    img[hz : hz + 7] = 0.35  # far sidewalk
    img[hz + 7 : hz + 9] = -0.5  # curb
    near_curb = int(hz + ground * 1.15 / 1.6)
    img[hz + 9 : near_curb] = -0.35  # asphalt
    for depth in (4.5, 2.3):  # dashed lane markings, dashes shorter far away
        row = int(hz + ground * 1.15 / depth)
        dash = int(40 / depth)
        for dx in range(int(rng.integers(0, 2 * dash)), W, 3 * dash):
            img[row : row + max(1, int(5 / depth)), dx : dx + dash] = 0.8
    img[near_curb : near_curb + 3] = 0.6  # near curb
    img[near_curb + 3 :] = 0.25  # near sidewalk with paving joints
    for k in range(1, 8):
        row = near_curb + 3 + int(k**1.5 * 3)
        img[row : row + 1] = -0.1
    img += config.texture_contrast * _fractal_noise(rng, (H, W))
    return img.astype(np.float32)
