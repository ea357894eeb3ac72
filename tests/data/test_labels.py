import pickle

import numpy as np
import pytest

from data.errors import LabelFormatError
from data.formats.labels import BBOX_DTYPE, LEGACY_BBOX_DTYPE, make_boxes, read_labels, write_labels


def _boxes():
    return make_boxes(
        np.array([500_000, 250_000, 250_000]),
        np.array([10.0, 20, 30]),
        np.array([5.0, 6, 7]),
        np.array([40.0, 12, 50]),
        np.array([30.0, 30, 20]),
        np.array([0, 1, 0]),
        np.array([1, 2, 3]),
    )


def test_round_trip_sorts_by_time_and_keeps_fields(tmp_path):
    write_labels(tmp_path / "a_bbox.npy", _boxes())
    back = read_labels(tmp_path / "a_bbox.npy")
    assert back.dtype == BBOX_DTYPE
    assert back["t"].tolist() == [250_000, 250_000, 500_000]
    assert back["track_id"].tolist() == [2, 3, 1] and np.all(back["class_confidence"] == 1)


def test_legacy_gen1_dtype_is_normalised(tmp_path):
    legacy = np.zeros(2, dtype=LEGACY_BBOX_DTYPE)
    legacy["ts"] = [59_749_999, 100]
    legacy["x"], legacy["w"], legacy["h"] = 118, 43, 39
    legacy["class_id"], legacy["confidence"], legacy["track_id"] = [0, 1], 1.0, [2753, 9]
    np.save(tmp_path / "old_bbox.npy", legacy)
    back = read_labels(tmp_path / "old_bbox.npy")
    assert back.dtype == BBOX_DTYPE
    assert back["t"].tolist() == [100, 59_749_999] and back["track_id"].tolist() == [9, 2753]


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros(3), "structured"),
        (np.zeros(2, dtype=[("t", "<i8"), ("x", "<f4")]), "lacks fields"),
    ],
)
def test_foreign_arrays_are_rejected(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(LabelFormatError, match=message):
        read_labels(tmp_path / "bad.npy")


def test_bad_values_and_pickles_are_rejected(tmp_path):
    boxes = _boxes()
    boxes["w"][1] = np.nan
    with pytest.raises(LabelFormatError, match="NaN"):
        write_labels(tmp_path / "x.npy", boxes)
    boxes = _boxes()
    boxes["h"][0] = -1
    with pytest.raises(LabelFormatError, match="non-negative"):
        write_labels(tmp_path / "x.npy", boxes)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(LabelFormatError, match="not a readable"):
        read_labels(tmp_path / "obj.npy")
    (tmp_path / "junk.npy").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(LabelFormatError):
        read_labels(tmp_path / "junk.npy")
