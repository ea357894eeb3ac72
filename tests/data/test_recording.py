import numpy as np
import pytest

from data.errors import RecordingFormatError
from data.formats.dat import DatRecording, write_dat
from data.formats.labels import make_boxes, write_labels
from data.formats.raw import RawRecording, write_raw
from data.formats.recording import open_recording
from tests.helpers import random_events


def test_reader_is_chosen_by_content_not_extension(tmp_path):
    ev = random_events(100)
    write_dat(tmp_path / "looks_raw.raw", ev)
    write_raw(tmp_path / "looks_dat.dat", ev, "evt2")
    assert isinstance(open_recording(tmp_path / "looks_raw.raw"), DatRecording)
    raw = open_recording(tmp_path / "looks_dat.dat")
    assert isinstance(raw, RawRecording) and raw.format == "evt2"
    assert np.array_equal(raw.read(), ev)


def test_geometry_override(tmp_path):
    write_dat(tmp_path / "a.dat", random_events(10))
    rec = open_recording(tmp_path / "a.dat", width=640, height=480)
    assert (rec.width, rec.height) == (640, 480)


@pytest.mark.parametrize(
    "content, name, message",
    [
        (b"", "empty.dat", "empty file"),
        (b"", "empty.raw", "empty file"),
        (b"\x89PNG\r\n\x1a\n" + bytes(30), "image.raw", "no Prophesee"),
        (b"hello world\n", "notes.txt", "no Prophesee"),
    ],
)
def test_foreign_files_are_typed_errors(tmp_path, content, name, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(RecordingFormatError, match=message):
        open_recording(tmp_path / name)


def test_label_file_is_not_a_recording(tmp_path):
    write_labels(tmp_path / "x_bbox.npy", make_boxes([1], [0], [0], [1], [1], [0]))
    with pytest.raises(RecordingFormatError, match="labels"):
        open_recording(tmp_path / "x_bbox.npy")


def test_missing_and_directory_paths(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_recording(tmp_path / "nope.dat")
    with pytest.raises(IsADirectoryError):
        open_recording(tmp_path)


@pytest.mark.parametrize(
    "name, fmt", [("sample_ncars.dat", "dat"), ("sparklers.raw", "evt2"), ("evt3_sample.raw", "evt3")]
)
def test_real_fixtures_open_by_content(real_file, name, fmt):
    assert open_recording(real_file(name)).format == fmt
