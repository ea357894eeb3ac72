import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data.errors import EventValidationError
from data.events import make_events
from data.formats.dat import DatRecording, write_dat
from data.windows import WindowCutter, iter_windows, label_window_index
from tests.helpers import random_events

DT = 50_000


def _check_partition(windows, ev, window_us):
    indices = [w.index for w in windows]
    assert indices == list(range(indices[0], indices[0] + len(indices))), "windows must be consecutive"
    for w in windows:
        assert w.t_start == w.index * window_us and w.t_end == w.t_start + window_us
        assert np.all((w.events["t"] >= w.t_start) & (w.events["t"] < w.t_end))
    assert np.array_equal(np.concatenate([w.events for w in windows]), ev), "every event in exactly one window"


@settings(max_examples=60, deadline=None)
@given(
    times=st.lists(st.integers(0, 400_000), min_size=1, max_size=200),
    window_us=st.sampled_from([97, 1000, 50_000]),
    cuts=st.lists(st.integers(0, 200), max_size=6),
)
def test_windows_partition_events_for_any_chunking(times, window_us, cuts):
    t = np.sort(np.array(times))
    ev = make_events(t, np.zeros_like(t), np.zeros_like(t), np.ones_like(t))
    bounds = sorted({min(c, len(ev)) for c in cuts} | {0, len(ev)})
    cutter = WindowCutter(window_us)
    windows = []
    for a, b in itertools.pairwise(bounds):
        windows += cutter.push(ev[a:b])
    windows += cutter.flush()
    _check_partition(windows, ev, window_us)
    assert windows[0].index == t[0] // window_us and windows[-1].index == t[-1] // window_us


def test_empty_windows_are_emitted():
    ev = make_events([10, 260_000], [1, 2], [1, 2], [0, 1])
    windows = list(iter_windows([ev], DT))
    assert [len(w.events) for w in windows] == [1, 0, 0, 0, 0, 1]


def test_event_exactly_on_boundary_goes_to_next_window():
    ev = make_events([49_999, 50_000], [0, 0], [0, 0], [0, 0])
    windows = list(iter_windows([ev], DT))
    assert [(w.index, len(w.events)) for w in windows] == [(0, 1), (1, 1)]


def test_window_completes_only_when_an_event_reaches_its_end():
    cutter = WindowCutter(DT)
    assert cutter.push(make_events([100, 49_999], [0, 0], [0, 0], [0, 0])) == []
    done = cutter.push(make_events([50_000], [0], [0], [0]))
    assert [w.index for w in done] == [0]


def test_flush_then_late_events_are_counted_not_mixed():
    cutter = WindowCutter(DT)
    cutter.push(make_events([100], [0], [0], [0]))
    assert [w.index for w in cutter.flush()] == [0]
    assert cutter.flush() == []
    done = cutter.push(make_events([200, 60_000, 120_000], [0, 0, 0], [0, 0, 0], [0, 0, 0]))
    assert cutter.late_events == 1 and [(w.index, len(w.events)) for w in done] == [(1, 1)]


def test_decreasing_time_across_chunks_is_rejected():
    cutter = WindowCutter(DT)
    cutter.push(make_events([500], [0], [0], [0]))
    with pytest.raises(EventValidationError, match="across chunks"):
        cutter.push(make_events([400], [0], [0], [0]))


def test_iter_windows_over_a_file_with_range(tmp_path):
    ev = random_events(20_000, t_max=1_000_000, seed=5)
    write_dat(tmp_path / "r.dat", ev)
    rec = DatRecording(tmp_path / "r.dat")
    windows = list(iter_windows(rec, DT))
    _check_partition(windows, ev, DT)
    ranged = list(iter_windows(rec, DT, t0=120_000, t1=330_001))
    assert [w.index for w in ranged] == [2, 3, 4, 5, 6]
    inside = (ev["t"] >= 3 * DT) & (ev["t"] < 4 * DT)  # window 3, cut independently of the cutter
    assert np.array_equal(ranged[1].events, ev[inside])


def test_iter_windows_range_past_the_data_gives_empty_windows():
    ev = make_events([10], [0], [0], [0])
    windows = list(iter_windows([ev], DT, t0=0, t1=200_000))
    assert [len(w.events) for w in windows] == [1, 0, 0, 0]


def test_label_window_is_the_one_whose_end_is_nearest():
    assert label_window_index(np.array([50_000, 74_999, 75_000, 99_000, 10]), DT).tolist() == [0, 0, 1, 1, 0]


def test_bad_window_length():
    with pytest.raises(ValueError, match="positive"):
        WindowCutter(0)
