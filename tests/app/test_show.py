"""``spquant show`` and the frame renderer behind it."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.cli import main
from app.render import Style, boxes_near, event_image
from data.events import make_events
from data.formats.labels import make_boxes, read_labels, write_labels
from data.synthetic import difficulty_config, recording_seed, write_recording
from tests.conftest import REPO

STYLE = Style()


def _has(image: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool(np.all(image == np.array(colour, np.uint8), axis=-1).any())


def _cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse rejects bad arguments this way
        return int(exc.code)


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    """A 1.5 s synthetic recording: ``street_td.dat`` with ``street_bbox.npy`` beside it."""
    stem = tmp_path_factory.mktemp("show") / "street"
    write_recording(stem, difficulty_config("normal"), 1.5, recording_seed(2, "test", 0))
    return Path(f"{stem}_td.dat")


def test_event_image_colours_majority_polarity():
    ev = make_events([0, 1, 2, 3, 4], [1, 1, 1, 5, 7], [2, 2, 2, 3, 0], [0, 0, 1, 1, 0])
    image = event_image(ev, 8, 4, Style(scale=2))
    assert image.shape == (8, 16, 3) and image.dtype == np.uint8
    assert tuple(image[4, 2]) == STYLE.off  # pixel (1, 2): two OFF, one ON
    assert tuple(image[6, 10]) == STYLE.on  # pixel (5, 3)
    assert tuple(image[0, 14]) == STYLE.off and tuple(image[1, 15]) == STYLE.off  # upscaled without smoothing
    assert tuple(image[0, 0]) == STYLE.background


def test_boxes_near_picks_the_nearest_timestamp_within_tolerance():
    boxes = make_boxes([100, 100, 300], [0, 5, 0], [0, 0, 0], [4, 4, 4], [4, 4, 4], [0, 1, 0])
    assert list(boxes_near(boxes, 180, 100)["x"]) == [0, 5]
    assert list(boxes_near(boxes, 260, 100)["t"]) == [300]
    assert len(boxes_near(boxes, 1000, 100)) == 0
    assert len(boxes_near(boxes[:0], 100, 100)) == 0


def test_png_with_labels_found_automatically(recording, tmp_path, capsys):
    out = tmp_path / "frame.png"
    assert _cli(["show", str(recording), "--t", "1000", "--out", str(out)]) == 0
    assert "street_bbox.npy" in capsys.readouterr().out
    image = cv2.imread(str(out))
    assert image.shape == (240 * 3, 304 * 3, 3)
    assert _has(image, STYLE.on) and _has(image, STYLE.off)
    assert any(_has(image, colour) for colour in STYLE.label_colours)
    assert not _has(image, STYLE.detection_colour)


def test_png_with_detections_and_explicit_labels(recording, tmp_path):
    labels = read_labels(recording.with_name("street_bbox.npy"))
    at = labels[labels["t"] == 1_000_000]
    assert len(at)
    detections = make_boxes(at["t"], at["x"] + 3, at["y"], at["w"], at["h"], at["class_id"],
                            class_confidence=np.full(len(at), 0.8))  # fmt: skip
    write_labels(tmp_path / "dets.npy", detections)
    moved = tmp_path / "elsewhere_td.dat"  # no labels beside it: only --labels brings them
    shutil.copy(recording, moved)
    shutil.copy(recording.with_name("street_bbox.npy"), tmp_path / "gt.npy")
    out = tmp_path / "frame.png"
    argv = ["show", str(moved), "--t", "1000", "--out", str(out), "--scale", "2"]
    assert _cli([*argv, "--labels", str(tmp_path / "gt.npy"), "--detections", str(tmp_path / "dets.npy")]) == 0
    image = cv2.imread(str(out))
    assert image.shape == (480, 608, 3)
    assert _has(image, STYLE.detection_colour) and any(_has(image, c) for c in STYLE.label_colours)
    assert _cli([*argv]) == 0
    image = cv2.imread(str(out))
    assert not any(_has(image, c) for c in STYLE.label_colours)


def test_video(recording, tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    assert _cli(["show", str(recording), "--t", "500", "--duration", "500", "--out", str(out)]) == 0
    written = Path(capsys.readouterr().out.split("wrote ")[1].split(":")[0])
    assert written.suffix in (".mp4", ".avi") and written.stat().st_size > 0  # .avi only without an mp4v encoder
    capture = cv2.VideoCapture(str(written))
    frames = 0
    while True:
        ok, image = capture.read()
        if not ok:
            break
        assert image.shape == (720, 912, 3)
        frames += 1
    assert frames == 11  # windows ending at 500, 550, ..., 1000 ms


def test_whole_recording_video_by_default(recording, tmp_path, capsys):
    out = tmp_path / "all.avi"
    assert _cli(["show", str(recording), "--window", "100", "--out", str(out)]) == 0
    assert "15 frames of 100 ms at 10 fps" in capsys.readouterr().out


def test_bundled_sample_renders(tmp_path):
    sample = REPO / "data" / "samples" / "street_td.dat"
    assert sample.is_file() and sample.with_name("street_bbox.npy").is_file()
    out = tmp_path / "sample.png"
    assert _cli(["show", str(sample), "--t", "1500", "--out", str(out)]) == 0
    assert any(_has(cv2.imread(str(out)), c) for c in STYLE.label_colours)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["missing_td.dat", "--out", "{tmp}/x.png"], "No such file"),
        (["{rec}", "--out", "{tmp}/x.gif"], "--out must end in"),
        (["{rec}", "--out", "{tmp}/no/such/folder/x.png"], "does not exist"),
        (["{rec}", "--out", "{tmp}/x.png", "--labels", "{tmp}/none.npy"], "none.npy"),
        (["{rec}", "--out", "{tmp}/x.png", "--window", "-5"], "expected a time in ms >= 0"),
        (["{rec}", "--out", "{tmp}/x.png", "--window", "0"], "expected a value > 0"),
        (["{rec}"], "--out"),
    ],
)
def test_bad_input_is_a_clean_error(recording, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, rec=recording) for a in argv]
    assert _cli(["show", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_show_on_a_label_file_is_a_clean_error(recording, tmp_path, capsys):
    assert _cli(["show", str(recording.with_name("street_bbox.npy")), "--out", str(tmp_path / "x.png")]) == 2
    assert "not an event recording" in capsys.readouterr().err
