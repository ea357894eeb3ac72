import json

import numpy as np
import pytest

from app.cli import main
from app.prophesee import evaluate_detections, match_times
from data.box_filter import GEN1_FILTER, BoxFilter
from data.formats.labels import LEGACY_BBOX_DTYPE, make_boxes, write_labels


def _gt(n=120, seed=0):
    rng = np.random.default_rng(seed)
    t = np.repeat(np.arange(3, 3 + n // 4) * 250_000, 4)
    return make_boxes(
        t,
        rng.uniform(0, 250, n),
        rng.uniform(0, 180, n),
        rng.uniform(20, 60, n),
        rng.uniform(25, 60, n),
        rng.integers(0, 2, n),
        np.arange(n),
    )


def test_ground_truth_against_itself_scores_one():
    gt = _gt()
    metrics = evaluate_detections([(gt, gt), (_gt(seed=1), _gt(seed=1))])
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert metrics["per_class"] == {"car": pytest.approx(1.0), "pedestrian": pytest.approx(1.0)}


def test_no_detections_scores_zero_without_crashing():
    metrics = evaluate_detections([(_gt(), _gt()[:0])])
    assert metrics["AP"] == 0.0 and metrics["detections"] == 0
    assert evaluate_detections([])["images"] == 0


def test_shifted_boxes_lower_strict_ap_but_not_ap50():
    gt = _gt()
    dt = gt.copy()
    dt["x"] += 4
    metrics = evaluate_detections([(gt, dt)])
    assert metrics["AP50"] == pytest.approx(1.0) and metrics["AP"] < 0.95


def test_box_filter_boundaries():
    boxes = make_boxes(
        [500_000, 500_001, 600_000, 600_000, 600_000, 600_000],
        [0] * 6,
        [0] * 6,
        [30, 30, 9.99, 10, 18, 21.2],
        [30, 30, 40, 40, 24, 21.2],
        [0] * 6,
    )
    kept = GEN1_FILTER(boxes)
    # t must exceed 0.5 s strictly; side >= 10 inclusive; diagonal >= 30 inclusive (18-24-30 triangle)
    assert kept["w"].tolist() == pytest.approx([30, 10, 18])
    assert len(BoxFilter(skip_us=0, min_diag=0, min_side=0)(boxes)) == 6


def test_time_matching_tolerance_is_inclusive_50ms():
    gt = make_boxes([1_000_000], [0], [0], [40], [40], [0])
    dets = make_boxes([950_000, 1_050_000, 1_050_001, 949_999], [0] * 4, [0] * 4, [40] * 4, [40] * 4, [0] * 4)
    ((ts, _, d),) = match_times(gt, dets, nearest_only=False)
    assert ts == 1_000_000 and sorted(d["t"].tolist()) == [950_000, 1_050_000]


def test_nearest_only_keeps_one_timestamp():
    gt = make_boxes([1_000_000], [0], [0], [40], [40], [0])
    dets = make_boxes([975_000, 1_000_000, 1_000_000, 1_025_000], [0] * 4, [0] * 4, [40] * 4, [40] * 4, [0] * 4)
    ((_, _, d),) = match_times(gt, dets)
    assert d["t"].tolist() == [1_000_000, 1_000_000]
    # duplicates from neighbouring windows count as false positives under the literal rule
    strict = evaluate_detections([(gt, dets)], nearest_only=False)
    assert evaluate_detections([(gt, dets)])["AP"] >= strict["AP"]


def test_detections_before_half_second_and_tiny_ones_are_ignored():
    gt = _gt()
    noise = make_boxes([400_000, 1_000_000], [5, 5], [5, 5], [50, 5], [50, 5], [0, 0], class_confidence=[1.0, 1.0])
    dets = np.concatenate([gt, noise])
    assert evaluate_detections([(gt, dets)])["AP"] == pytest.approx(1.0)


def test_legacy_label_dtype_is_accepted():
    gt = _gt()
    legacy = np.zeros(len(gt), LEGACY_BBOX_DTYPE)
    for field in ("x", "y", "w", "h", "class_id", "track_id"):
        legacy[field] = gt[field]
    legacy["ts"], legacy["confidence"] = gt["t"], 1.0
    assert evaluate_detections([(legacy, gt)])["AP"] == pytest.approx(1.0)


def test_score_cli(tmp_path, capsys):
    (tmp_path / "gt").mkdir()
    (tmp_path / "dt").mkdir()
    write_labels(tmp_path / "gt" / "a_bbox.npy", _gt())
    write_labels(tmp_path / "dt" / "a_bbox.npy", _gt())
    assert main(["score", "--gt", str(tmp_path / "gt"), "--dt", str(tmp_path / "dt"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["AP"] == pytest.approx(1.0) and {"AP50", "AP75", "APs", "APm", "APl", "per_class"} <= set(out)
    assert main(["score", "--gt", str(tmp_path / "gt"), "--dt", str(tmp_path / "dt")]) == 0
    assert "AP50" in capsys.readouterr().out


def test_score_cli_bad_input(tmp_path, capsys):
    (tmp_path / "gt").mkdir()
    (tmp_path / "dt").mkdir()
    write_labels(tmp_path / "gt" / "a_bbox.npy", _gt())
    assert main(["score", "--gt", str(tmp_path / "gt"), "--dt", str(tmp_path / "dt")]) == 2
    assert "no detection file" in capsys.readouterr().err
    assert main(["score", "--gt", str(tmp_path / "nope"), "--dt", str(tmp_path / "dt")]) == 2
