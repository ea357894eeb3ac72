"""The synthetic event camera: sensor model, scene, labels, determinism, statistics and ``spquant synth``."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from app.cli import main
from data.events import EVENT_DTYPE, validate_events
from data.formats.dat import DatRecording
from data.formats.labels import BBOX_DTYPE, read_labels
from data.synthetic import (
    SceneConfig,
    SensorConfig,
    StreetScene,
    SynthConfig,
    difficulty_config,
    recording_seed,
    simulate,
    write_dataset,
    write_recording,
)
from data.synthetic.dataset import recording_streams
from data.synthetic.labels import LabelConfig, boxes_at, label_times
from data.synthetic.scene import Placement, Sprite, Track
from data.synthetic.sensor import EventSensor

W, H = 304, 240
SILENT = SensorConfig(shot_noise_hz=0.0, hot_pixels=0)


def _events(frames, config: SensorConfig, duration_us: float, seed: int = 0) -> np.ndarray:
    return np.concatenate(list(simulate(frames, duration_us, config, np.random.default_rng(seed))), dtype=EVENT_DTYPE)


# --- sensor ----------------------------------------------------------------------------------------------------------


def test_static_scene_without_noise_is_silent():
    frame = np.random.default_rng(0).normal(0, 1, (H, W)).astype(np.float32)
    assert len(_events(lambda t: frame, SILENT, 200_000)) == 0


def test_timestamps_are_interpolated_between_frames():
    # A uniform brightening of 2 log units per second: each pixel fires every c/2 s, at its own sub-frame time.
    cfg = replace(SILENT, threshold_mismatch=0.03)
    ev = _events(lambda t: np.full((24, 30), 2.0 * t / 1e6, np.float32), cfg, 1e6)
    validate_events(ev, 30, 24)
    period = 1e6 / cfg.frame_rate_hz
    assert np.all(ev["p"] == 1) and len(ev) > 24 * 30 * 5
    assert np.mean(ev["t"] % period == 0) < 0.01  # not quantised to the 5 ms frame grid
    assert len(np.unique(ev["t"] % period)) > 1000
    # One pixel's events are evenly spaced by its threshold / slope.
    one = ev["t"][(ev["x"] == 3) & (ev["y"] == 4)]
    gaps = np.diff(one)
    assert gaps.std() < 2 and 0.08e6 < gaps.mean() < 0.16e6


def test_threshold_mismatch_spreads_per_pixel_counts():
    ramp = lambda t: np.full((20, 20), 3.0 * t / 1e6, np.float32)  # noqa: E731
    uniform = _events(ramp, replace(SILENT, threshold_mismatch=0.0), 1e6)
    mismatched = _events(ramp, replace(SILENT, threshold_mismatch=0.04), 1e6)
    counts = lambda ev: np.bincount(ev["y"].astype(int) * 20 + ev["x"], minlength=400)  # noqa: E731
    # Equal thresholds: counts differ only through the random starting reference (at most one crossing either way).
    assert counts(uniform).max() - counts(uniform).min() <= 2
    assert counts(mismatched).std() > 2 * counts(uniform).std()


def test_refractory_period_is_respected():
    # 220 log units/s against a threshold of 0.22: a crossing every 1 ms; a 2 ms refractory keeps every second one.
    cfg = replace(SILENT, threshold_on=0.22, threshold_mismatch=0.0, refractory_us=2000.0)
    ev = _events(lambda t: np.full((8, 8), 220.0 * t / 1e6, np.float32), cfg, 200_000)
    per_pixel = [ev["t"][ev["y"].astype(int) * 8 + ev["x"] == pixel] for pixel in range(64)]
    assert all(np.diff(t).min() >= 2000 - 1 for t in per_pixel)  # -1: timestamps are floored to whole µs
    assert all(98 <= len(t) <= 101 for t in per_pixel)


def test_shot_noise_and_hot_pixels():
    cfg = replace(SensorConfig(), shot_noise_hz=1.0, hot_pixels=3, hot_pixel_hz=300.0)
    frame = np.zeros((H, W), np.float32)
    ev = _events(lambda t: frame, cfg, 2e6)
    counts = np.bincount(ev["y"].astype(int) * W + ev["x"], minlength=W * H)
    hot = np.sort(counts)[-3:]
    assert np.all(hot > 400)  # three pixels near 300 Hz
    background = len(ev) - hot.sum()
    assert 0.9 * W * H * 2 < background < 1.1 * W * H * 2  # 1 Hz per pixel over 2 s
    assert 0.45 < ev["p"].mean() < 0.55


def test_sensor_reference_starts_within_thresholds():
    # No burst at the start: the first frame is what the pixels are already adapted to.
    frame = np.random.default_rng(1).normal(0, 1, (H, W)).astype(np.float32)
    sensor = EventSensor(SILENT, np.random.default_rng(2), frame)
    t, pixels, _ = sensor.step(frame, 0, 5000)
    assert len(t) == 0 and len(pixels) == 0


# --- scene and labels ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def busy_scene() -> StreetScene:
    config = SceneConfig(car_rate_hz=1.0, pedestrian_rate_hz=0.8, stop_probability=0.5)
    return StreetScene(config, np.random.default_rng(7), 30e6)


def test_scene_has_varied_tracks(busy_scene):
    tracks = busy_scene.tracks
    assert {t.class_id for t in tracks} == {0, 1}
    assert {t.direction for t in tracks} == {-1, 1}
    entering = [t for t in tracks if 0 < t.t_in < busy_scene.duration_us]
    leaving = [t for t in tracks if 0 < t.t_out < busy_scene.duration_us]
    assert entering and leaving
    stopping = [t for t in tracks if np.any(np.diff(t.s_grid) == 0)]
    assert stopping
    boxes = [p.box() for t in np.arange(1e6, 30e6, 1e6) for p in busy_scene.placements(t)]
    w = np.array([b[2] - b[0] for b in boxes])
    h = np.array([b[3] - b[1] for b in boxes])
    small = (np.hypot(w, h) < 30) | (w < 10) | (h < 10)  # what the Gen1 evaluation filter drops
    assert small.any() and (~small).any()
    assert w.max() > 100 or h.max() > 90  # and some near, large objects


def test_render_is_a_log_intensity_frame(busy_scene):
    frame = busy_scene.render(5e6)
    assert frame.shape == (H, W) and frame.dtype == np.float32 and np.all(np.isfinite(frame))
    assert np.array_equal(frame, busy_scene.render(5e6))
    assert frame.std() > 0.3  # textured, not flat


def _square_track(track_id: int, depth: float, size: int = 20) -> Track:
    alpha = np.zeros((size + 2, size + 2), np.float32)
    alpha[1:-1, 1:-1] = 1  # a square with the empty border every sprite has
    sprite = Sprite(np.stack([alpha * 0.5, alpha])[None], np.array([[1, 1, size + 1, size + 1]], np.float32))
    grid = np.array([0.0, 1e6])
    return Track(track_id, 0, depth, sprite, 0.0, 0.0, 1, 1.0, grid, np.zeros(2), 0.0, 1e6)


def test_labels_drop_hidden_and_outside_objects():
    far, near = _square_track(1, depth=5.0), _square_track(2, depth=2.0)
    cfg = LabelConfig()
    # The near square covers 90 % of the far one: the far one is occluded away.
    boxes = boxes_at([Placement(far, 50, 50, 0), Placement(near, 52, 50, 0)], 1000, W, H, cfg)
    assert list(boxes["track_id"]) == [2]
    # Half covered: both are labelled, with the full (not the visible) box.
    boxes = boxes_at([Placement(far, 50, 50, 0), Placement(near, 60, 50, 0)], 1000, W, H, cfg)
    assert sorted(boxes["track_id"]) == [1, 2] and np.all(boxes["w"] == 20)
    # Entirely outside, barely inside (5 %), and half inside (clipped to the frame).
    boxes = boxes_at([Placement(far, -30, 10, 0), Placement(near, W - 2, 10, 0)], 1000, W, H, cfg)
    assert len(boxes) == 0
    boxes = boxes_at([Placement(far, -11, 10, 0)], 1000, W, H, cfg)  # the sprite's border column is empty
    assert boxes.dtype == BBOX_DTYPE and (boxes["x"][0], boxes["w"][0], boxes["t"][0]) == (0, 10, 1000)


def test_label_times_follow_the_rate():
    assert list(label_times(1e6, 4.0)) == [250_000, 500_000, 750_000, 1_000_000]
    assert len(label_times(60e6, 20.0)) == 1200


# --- a recording: consistency of events and labels --------------------------------------------------------------------


@pytest.fixture(scope="module")
def quiet_recording(tmp_path_factory):
    """A fixed camera, little noise and objects that always stop once: events can be traced to objects."""
    config = SynthConfig(
        scene=SceneConfig(car_rate_hz=0.6, pedestrian_rate_hz=0.4, stop_probability=1.0, stop_duration_s=(2.0, 3.0)),
        sensor=SensorConfig(shot_noise_hz=0.02, hot_pixels=0),
        labels=LabelConfig(rate_hz=20.0),
    )
    seed = recording_seed(11, "test", 0)
    stem = tmp_path_factory.mktemp("quiet") / "quiet"
    summary = write_recording(stem, config, 12.0, seed)
    scene = StreetScene(config.scene, recording_streams(seed)[0], 12e6)
    return summary, scene, DatRecording(summary.events_path).read(), read_labels(summary.labels_path)


def test_files_read_back(quiet_recording):
    summary, _, events, labels = quiet_recording
    recording = DatRecording(summary.events_path)
    assert (recording.width, recording.height, len(recording)) == (W, H, summary.events)
    validate_events(events, W, H)
    assert recording.t_first >= 0 and recording.t_last <= 12_000_000
    assert labels.dtype == BBOX_DTYPE and len(labels) == sum(summary.boxes_per_class)
    assert set(np.unique(labels["class_id"])) == {0, 1} and np.all(labels["class_confidence"] == 1)
    assert np.all(labels["t"] % 50_000 == 0)


def test_labels_lie_inside_the_frame(quiet_recording):
    labels = quiet_recording[3]
    assert np.all(labels["x"] >= 0) and np.all(labels["y"] >= 0)
    assert np.all(labels["x"] + labels["w"] <= W) and np.all(labels["y"] + labels["h"] <= H)
    assert np.all(labels["w"] >= 2) and np.all(labels["h"] >= 2)
    keys = labels[["t", "track_id"]]
    assert len(np.unique(keys)) == len(labels)  # one box per object per timestamp


def _box_mask(boxes: np.ndarray, margin: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    for b in boxes:
        x0, y0 = max(int(b["x"]) - margin, 0), max(int(b["y"]) - margin, 0)
        mask[y0 : int(np.ceil(b["y"] + b["h"])) + margin, x0 : int(np.ceil(b["x"] + b["w"])) + margin] = True
    return mask


def test_events_fall_inside_the_boxes(quiet_recording):
    _, _, events, labels = quiet_recording
    inside = total = 0
    for t in np.unique(labels["t"])[::4]:
        near = events[(events["t"] >= t - 5000) & (events["t"] < t + 5000)]
        inside += np.count_nonzero(_box_mask(labels[labels["t"] == t], margin=3)[near["y"], near["x"]])
        total += len(near)
    # The rest: objects too hidden or too far outside to be labelled, and shot noise.
    assert total > 10_000 and inside / total > 0.85


def _meets_another_object(scene: StreetScene, box: np.ndarray, margin: float = 2.0) -> bool:
    """Whether any other object, labelled or not, comes near ``box`` in the 50 ms before its timestamp."""
    t = int(box["t"])
    others = [p.box() for u in (t - 50_000, t) for p in scene.placements(u) if p.track.track_id != box["track_id"]]
    o = np.array(others).reshape(-1, 4)  # [N, (x0, y0, x1, y1)]
    x0, y0, x1, y1 = box["x"] - margin, box["y"] - margin, box["x"] + box["w"] + margin, box["y"] + box["h"] + margin
    return bool(np.any((o[:, 0] < x1) & (x0 < o[:, 2]) & (o[:, 1] < y1) & (y0 < o[:, 3])))


def test_stopped_objects_go_silent(quiet_recording):
    _, scene, events, labels = quiet_recording

    def density(boxes: np.ndarray) -> tuple[float, int]:
        """Events per pixel in each box over the 50 ms before it, for boxes that no other object meets."""
        n = area = used = 0
        for b in boxes:
            if _meets_another_object(scene, b):
                continue
            near = events[(events["t"] > b["t"] - 50_000) & (events["t"] <= b["t"])]
            n += np.count_nonzero(_box_mask(b[None], 0)[near["y"], near["x"]])
            area += b["w"] * b["h"]
            used += 1
        return n / max(area, 1), used

    checked = 0
    for track in scene.tracks:
        still = np.flatnonzero(np.diff(track.s_grid) == 0)  # grid steps (10 ms) without motion
        if len(still) < 100:
            continue
        mine = labels[labels["track_id"] == track.track_id]
        t0, t1 = track.t_grid[still[10]], track.t_grid[still[-1]]  # after the last bit of motion has faded out
        stopped, n_stopped = density(mine[(mine["t"] >= t0) & (mine["t"] <= t1)])
        moving, n_moving = density(mine[(mine["t"] < track.t_grid[still[0]] - 1e6) | (mine["t"] > t1 + 1e6)])
        if n_stopped >= 5 and n_moving >= 5:
            assert stopped < 0.02 * moving, (track.track_id, stopped, moving)
            checked += 1
    assert checked >= 2


# --- statistics and determinism ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "difficulty, rate_range",
    [("easy", (1e4, 4e5)), ("normal", (5e4, 1e6)), ("hard", (1e5, 2e6))],
)
def test_statistics_per_difficulty(tmp_path, difficulty, rate_range):
    """Stated ranges (8 s, seed 3): events/s in ``rate_range``, ON share 40-60 %, 0.5-20 boxes per timestamp."""
    summary = write_recording(tmp_path / "r", difficulty_config(difficulty), 8.0, recording_seed(3, "train", 0))
    assert rate_range[0] <= summary.event_rate <= rate_range[1]
    assert 0.4 <= summary.on / summary.events <= 0.6
    labels = read_labels(summary.labels_path)
    per_timestamp = len(labels) / len(np.unique(labels["t"]))
    assert 0.5 <= per_timestamp <= 20
    assert all(n > 0 for n in summary.boxes_per_class)


def test_harder_is_busier(tmp_path):
    rates = {
        d: write_recording(tmp_path / d, difficulty_config(d), 6.0, recording_seed(5, "val", 0)).event_rate
        for d in ("easy", "hard")
    }
    assert rates["hard"] > 1.5 * rates["easy"]


def test_same_seed_gives_identical_files(tmp_path):
    config = difficulty_config("normal")
    write_dataset(tmp_path / "a", config, 2, 1.0, seed=9, splits=("train", "val"), progress=False)
    write_dataset(tmp_path / "b", config, 1, 1.0, seed=9, splits=("train", "val"), progress=False)
    write_dataset(tmp_path / "c", config, 1, 1.0, seed=10, splits=("train",), progress=False)
    for split in ("train", "val"):
        for suffix in ("_td.dat", "_bbox.npy"):
            name = f"{split}/synth_{split}_0000{suffix}"
            # Same seed: identical bytes, even though "a" holds more recordings than "b".
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    read = lambda p: (tmp_path / p).read_bytes()  # noqa: E731
    assert read("a/train/synth_train_0000_td.dat") != read("a/val/synth_val_0000_td.dat")
    assert read("a/train/synth_train_0000_td.dat") != read("a/train/synth_train_0001_td.dat")
    assert read("a/train/synth_train_0000_td.dat") != read("c/train/synth_train_0000_td.dat")


def test_recording_seeds_are_distinct():
    splits = ("train", "val", "test")
    keys = {recording_seed(0, split, i).generate_state(2).tobytes() for split in splits for i in range(5)}
    assert len(keys) == 15


@pytest.mark.slow
def test_a_sixty_second_hard_recording_is_complete(tmp_path):
    """A full-length recording (generation speed is measured by benchmarks, not asserted here)."""
    summary = write_recording(tmp_path / "long", difficulty_config("hard"), 60.0, recording_seed(0, "train", 0))
    assert summary.events > 6e6


# --- spquant synth --------------------------------------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse rejects bad arguments this way
        return int(exc.code)


def test_synth_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "ds"
    argv = ["synth", str(out), "--recordings", "2", "--duration", "0.5", "--seed", "4", "--splits", "train,test"]
    assert _cli([*argv, "--difficulty", "easy", "--label-rate", "10"]) == 0
    printed = capsys.readouterr().out
    assert "2 recordings" in printed and "car" in printed
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert names == [
        "test", "test/synth_test_0000_bbox.npy", "test/synth_test_0000_td.dat", "test/synth_test_0001_bbox.npy",
        "test/synth_test_0001_td.dat", "train", "train/synth_train_0000_bbox.npy", "train/synth_train_0000_td.dat",
        "train/synth_train_0001_bbox.npy", "train/synth_train_0001_td.dat",
    ]  # fmt: skip
    labels = read_labels(out / "train/synth_train_0000_bbox.npy")
    assert np.all(labels["t"] % 100_000 == 0)
    assert _cli(["info", str(out / "train/synth_train_0000_td.dat")]) == 0
    assert _cli(["info", str(out / "train/synth_train_0000_bbox.npy")]) == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--duration", "-1"], "duration must be > 0"),
        (["--duration", "0"], "duration must be > 0"),
        (["--duration", "5000"], "32-bit"),
        (["--difficulty", "extreme"], "invalid choice"),
        (["--recordings", "0"], "whole number >= 1"),
        (["--seed", "-3"], "whole number >= 0"),
        (["--splits", "train,,val"], "split names"),
    ],
)
def test_synth_cli_rejects_bad_arguments(tmp_path, capsys, extra, message):
    assert _cli(["synth", str(tmp_path / "ds"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "ds").exists()


def test_synth_cli_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert _cli(["synth", str(blocker), "--duration", "0.1", "--quiet"]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert _cli(["synth", str(blocker / "sub"), "--duration", "0.1", "--quiet"]) == 2
    assert "cannot write" in capsys.readouterr().err
