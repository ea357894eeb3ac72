import numpy as np
import pytest

from data.errors import EventDataError, EventValidationError
from data.events import EVENT_DTYPE, as_events, concat_events, empty_events, make_events, validate_events
from tests.helpers import random_events


def test_dtype_layout_is_aligned_and_typed():
    assert EVENT_DTYPE.itemsize == 16
    assert EVENT_DTYPE["t"] == np.int64 and EVENT_DTYPE["x"] == np.uint16 and EVENT_DTYPE["p"] == np.int8


def test_make_events_round_trips_columns():
    ev = make_events([1, 2, 3], [0, 5, 10], [1, 2, 3], [0, 1, 1])
    assert ev.dtype == EVENT_DTYPE
    assert ev["t"].tolist() == [1, 2, 3] and ev["x"].tolist() == [0, 5, 10] and ev["p"].tolist() == [0, 1, 1]


@pytest.mark.parametrize(
    "columns, message",
    [
        (([1, 2], [0], [0, 0], [0, 1]), "equally long"),
        (([1.5], [0], [0], [0]), "integers"),
        (([1], [-1], [0], [0]), "outside"),
        (([1], [70000], [0], [0]), "outside"),
    ],
)
def test_make_events_rejects_bad_columns(columns, message):
    with pytest.raises(EventValidationError, match=message):
        make_events(*columns)


def test_validate_accepts_good_events():
    ev = random_events(1000)
    assert validate_events(ev, 304, 240) is ev
    assert len(validate_events(empty_events(), 304, 240)) == 0


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda e: e["t"].__setitem__(5, -3), "negative timestamp"),
        (lambda e: e["t"].__setitem__(7, e["t"][6] - 1), "must not decrease: event 7"),
        (lambda e: e["p"].__setitem__(3, 2), "polarity must be 0 or 1, event 3"),
        (lambda e: e["x"].__setitem__(4, 304), "event 4 has x=304"),
        (lambda e: e["y"].__setitem__(9, 240), "event 9 has y=240"),
    ],
)
def test_validate_names_the_problem(mutate, message):
    ev = random_events(20, t_max=10_000)
    ev["t"] += 1000
    mutate(ev)
    with pytest.raises(EventValidationError, match=message):
        validate_events(ev, 304, 240)


def test_validate_rejects_foreign_arrays_with_typed_error():
    with pytest.raises(EventDataError, match="EVENT_DTYPE"):
        validate_events(np.zeros(3))
    with pytest.raises(EventDataError, match="EVENT_DTYPE"):
        validate_events([1, 2, 3])


def test_as_events_accepts_ts_spelling_and_rejects_missing_fields():
    legacy = np.zeros(2, dtype=[("ts", "<u8"), ("x", "<u2"), ("y", "<u2"), ("p", "u1")])
    legacy["ts"] = [5, 6]
    assert as_events(legacy)["t"].tolist() == [5, 6]
    with pytest.raises(EventValidationError, match="fields"):
        as_events(np.zeros(2, dtype=[("a", "<i8")]))


def test_concat_of_nothing_is_empty():
    assert len(concat_events([])) == 0 and concat_events([]).dtype == EVENT_DTYPE
