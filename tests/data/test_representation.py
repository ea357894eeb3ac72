import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data.errors import EventValidationError
from data.events import empty_events, make_events
from data.representation import StackedHistogram
from tests.helpers import random_events


def test_shape_is_padded_and_fixed_even_when_empty():
    rep = StackedHistogram()
    out = rep(empty_events(), 0)
    assert out.shape == (5, 2, 256, 320) and out.dtype == np.uint8 and not out.any()


def test_counts_bins_and_polarities():
    rep = StackedHistogram(bins=5, window_us=50_000, cutoff=255)
    ev = make_events([0, 9_999, 10_000, 49_999, 49_999], [1, 1, 1, 303, 303], [2, 2, 2, 239, 239], [1, 1, 0, 0, 1])
    out = rep(ev, 0)
    assert out[0, 1, 2, 1] == 2 and out[1, 0, 2, 1] == 1
    assert out[4, 0, 239, 303] == 1 and out[4, 1, 239, 303] == 1 and int(out.sum()) == 5


def test_cutoff_saturates():
    ev = make_events(np.zeros(300, int), np.zeros(300, int), np.zeros(300, int), np.ones(300, int))
    assert StackedHistogram(cutoff=10)(ev, 0)[0, 1, 0, 0] == 10
    assert StackedHistogram(cutoff=255)(ev, 0)[0, 1, 0, 0] == 255


@settings(max_examples=60, deadline=None)
@given(
    offsets=st.lists(st.integers(0, 49_999), min_size=1, max_size=300),
    bins=st.sampled_from([1, 2, 5, 10]),
    t_start=st.integers(0, 10**9),
)
def test_every_event_lands_in_exactly_one_bin(offsets, bins, t_start):
    dt = np.sort(np.array(offsets))
    n = len(dt)
    ev = make_events(t_start + dt, np.arange(n) % 304, np.arange(n) % 240, np.arange(n) % 2)
    out = StackedHistogram(bins=bins, cutoff=255)(ev, t_start)
    assert int(out.sum(dtype=np.int64)) == n
    per_bin = out.sum(axis=(1, 2, 3), dtype=np.int64)
    assert per_bin.tolist() == np.bincount(dt * bins // 50_000, minlength=bins).tolist()


@pytest.mark.parametrize(
    "t, x, y",
    [(-1, 0, 0), (50_000, 0, 0), (10, 304, 0), (10, 0, 240)],
)
def test_events_outside_window_or_sensor_are_typed_errors(t, x, y):
    ev = make_events([max(t, 0)], [x], [y], [0])
    start = 1 if t < 0 else 0
    with pytest.raises(EventValidationError, match="outside"):
        StackedHistogram()(ev, start)


@pytest.mark.parametrize("kwargs", [{"bins": 0}, {"cutoff": 300}, {"window_us": 50_001}, {"height": -1}])
def test_bad_configuration(kwargs):
    with pytest.raises(ValueError):
        StackedHistogram(**kwargs)


def test_matches_a_plain_numpy_histogram():
    ev = random_events(50_000, t_max=50_000, seed=2)
    out = StackedHistogram(cutoff=255)(ev, 0)
    ref = np.zeros((5, 2, 256, 320), np.int64)
    np.add.at(ref, (ev["t"] * 5 // 50_000, ev["p"], ev["y"], ev["x"]), 1)
    assert np.array_equal(out, np.minimum(ref, 255))
