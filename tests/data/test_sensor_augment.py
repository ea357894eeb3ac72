"""Sensor imperfections as training augmentation (tonic's event functions): identity when off, each transform's effect,
events sorted and on the window, seeded per window (and the same in DataLoader workers), bad values rejected."""

from __future__ import annotations

import numpy as np
import pytest
import tonic.functional

from app.config import ConfigError, build_config
from data.augment import Augmentation, AugmentParams, SensorAugmentation, SensorParams
from data.events import EVENT_DTYPE, empty_events
from data.gen1 import list_recordings
from data.loader import epoch_batches
from data.representation import StackedHistogram
from data.sequences import SequenceStreams
from data.synthetic.dataset import write_dataset
from data.synthetic.presets import difficulty_config
from tests.helpers import random_events

W, H, WINDOW, T0 = 80, 64, 50_000, 150_000
ALL_ON = SensorParams(refractory_us=400, drop_event=0.3, time_jitter_us=2_000.0, uniform_noise_hz=5.0, seed=7)


@pytest.fixture
def events() -> np.ndarray:
    """A dense window: 3 000 events on 80×64 pixels in [150 ms, 200 ms)."""
    return random_events(3_000, t_min=T0, t_max=T0 + WINDOW, width=W, height=H, seed=3)


def _apply(params: SensorParams, events: np.ndarray, t_start: int = T0) -> np.ndarray:
    return params(events, t_start, WINDOW, W, H)


@pytest.mark.parametrize("params", [SensorParams(), SensorParams(seed=5), AugmentParams().sensor])
def test_nothing_drawn_is_the_identity(params, events):
    assert _apply(params, events) is events


def test_an_empty_window_stays_empty():
    out = _apply(ALL_ON, empty_events())
    assert len(out) == 0 and out.dtype == EVENT_DTYPE


def test_all_on_keeps_the_event_contract(events):
    before = events.copy()
    out = _apply(ALL_ON, events)
    np.testing.assert_array_equal(events, before)  # tonic's jitter works in place: never on the caller's array
    assert out.dtype == EVENT_DTYPE and 0 < len(out) != len(events)
    assert np.all(np.diff(out["t"]) >= 0)  # the window cutting and the histogram need time order
    assert out["t"].min() >= T0 and out["t"].max() < T0 + WINDOW
    assert out["x"].max() < W and out["y"].max() < H and set(np.unique(out["p"])) <= {0, 1}
    StackedHistogram(bins=5, window_us=WINDOW, height=H, width=W)(out, T0)  # accepted as a window's input


def test_refractory_period_is_tonics(events):
    out = _apply(SensorParams(refractory_us=1_000), events)
    np.testing.assert_array_equal(out, tonic.functional.refractory_period_numpy(events, 1_000))
    assert 0 < len(out) < len(events)


def test_drop_removes_the_share_asked_for(events):
    out = _apply(SensorParams(drop_event=0.25), events)
    assert len(out) == len(events) - round(0.25 * len(events))
    assert np.isin(out, events).all()


def test_jitter_moves_times_only_and_keeps_them_in_the_window(events):
    out = _apply(SensorParams(time_jitter_us=500.0), events)
    assert np.all(np.diff(out["t"]) >= 0) and out["t"].min() >= T0 and out["t"].max() < T0 + WINDOW
    assert len(events) - 50 < len(out) <= len(events)  # only events jittered across the window's edges are lost
    assert not np.array_equal(np.sort(out["t"]), np.sort(events["t"])[: len(out)])


def test_noise_adds_the_rate_times_pixels_times_window(events):
    out = _apply(SensorParams(uniform_noise_hz=10.0), events)
    assert len(out) == len(events) + round(10.0 * W * H * WINDOW / 1e6)
    assert np.all(np.diff(out["t"]) >= 0)


def test_draws_are_a_function_of_pass_and_window_and_leave_numpys_generator_alone(events):
    np.random.seed(123)
    first = _apply(ALL_ON, events)
    after = np.random.random()
    np.random.seed(123)
    np.testing.assert_array_equal(_apply(ALL_ON, events), first)
    assert np.random.random() == after
    shifted = events.copy()
    shifted["t"] += WINDOW
    other_window = _apply(ALL_ON, shifted, T0 + WINDOW)
    other_window["t"] -= WINDOW
    assert not np.array_equal(other_window, first)


def test_sampling_draws_magnitudes_within_the_maxima_and_nothing_when_off():
    sensor = SensorAugmentation(refractory_us=300, drop_event=0.2, time_jitter_us=100.0, uniform_noise_hz=1.0)
    draws = [sensor.sample(np.random.default_rng(i)) for i in range(20)]
    assert all(0 <= d.refractory_us <= 300 and 0 <= d.drop_event <= 0.2 and 0 <= d.time_jitter_us <= 100 and
               0 <= d.uniform_noise_hz <= 1 for d in draws)
    assert len({d.seed for d in draws}) == 20
    # off: the flip/zoom draws are the ones made before sensor imperfections existed (bundled recipe unchanged)
    rng, reference = np.random.default_rng(4), np.random.default_rng(4)
    params = Augmentation(0.5, 1.0, 1.5).sample(rng, W, H)
    reference.random(), reference.random(), reference.uniform(), reference.uniform(), reference.uniform()
    assert params.sensor == SensorParams() and rng.random() == reference.random()


@pytest.mark.parametrize("values, message", [
    ({"drop_event": 1.0}, r"drop_event must lie in \[0, 1\)"),
    ({"drop_event": -0.1}, "drop_event"),
    ({"refractory_us": -5}, "refractory_us must be an integer >= 0"),
    ({"time_jitter_us": -1.0}, "time_jitter_us must be a finite number >= 0"),
    ({"uniform_noise_hz": float("inf")}, "uniform_noise_hz must be a finite number >= 0"),
])
def test_bad_values_are_rejected_naming_the_key(values, message):
    with pytest.raises(ValueError, match=message):
        SensorAugmentation(**values)
    with pytest.raises(ConfigError, match=message):
        build_config(None, values)


def test_config_keys_are_typed_and_off_by_default():
    config = build_config(None, {"refractory_us": "1e3", "drop_event": 0})
    assert config["refractory_us"] == 1000 and config["drop_event"] == 0.0
    assert build_config()["time_jitter_us"] == build_config()["uniform_noise_hz"] == 0
    with pytest.raises(ConfigError, match="refractory_us must be an integer"):
        build_config(None, {"refractory_us": 2.5})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, difficulty_config("normal"), recordings=2, duration_s=0.6, seed=2, splits=("train",),
                  progress=False)
    return root


def _streams(root, sensor: SensorAugmentation, geometry: float = 0.5) -> SequenceStreams:
    histogram = StackedHistogram(bins=2, window_us=WINDOW, height=H, width=W)
    return SequenceStreams(list_recordings(root, "train"), histogram, batch_size=3, seq_len=2,
                           augmentation=Augmentation(geometry, geometry, 1.5, sensor), seed=1)


def test_worker_batches_equal_in_process_batches_with_sensor_imperfections(dataset):
    streams = _streams(dataset, SensorAugmentation(300, 0.3, 1_000.0, 2.0))
    want = list(streams.epoch(1))
    got = list(epoch_batches(streams, 1, workers=2))
    assert len(got) == len(want) == len(streams) > 2
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a.inputs, b.inputs)
        for row_a, row_b in zip(a.boxes, b.boxes, strict=True):
            for boxes_a, boxes_b in zip(row_a, row_b, strict=True):
                np.testing.assert_array_equal(boxes_a, boxes_b)
    # not vacuous: without flips and zooms, the sensor imperfections alone change the inputs
    altered = _streams(dataset, SensorAugmentation(300, 0.3, 1_000.0, 2.0), geometry=0.0).epoch(1)
    plain = _streams(dataset, SensorAugmentation(), geometry=0.0).epoch(1)
    assert all(not np.array_equal(a.inputs, b.inputs) for a, b in zip(altered, plain, strict=True))
