import json

import pytest

from app.cli import main
from data.formats.dat import write_dat
from data.formats.labels import make_boxes, write_labels
from tests.helpers import random_events

KEYS = {"format", "width", "height", "events", "t_first", "t_last", "on", "off"}


def test_info_json_on_a_dat(tmp_path, capsys):
    ev = random_events(1234, t_max=2_000_000)
    write_dat(tmp_path / "a_td.dat", ev)
    assert main(["info", str(tmp_path / "a_td.dat"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info) >= KEYS
    assert info["events"] == 1234 and info["on"] == int(ev["p"].sum()) and info["on"] + info["off"] == 1234
    assert (info["width"], info["height"], info["format"]) == (304, 240, "dat")


def test_info_on_labels(tmp_path, capsys):
    write_labels(tmp_path / "a_bbox.npy", make_boxes([1, 1, 2], [0, 0, 0], [0, 0, 0], [5, 5, 5], [5, 5, 5], [0, 1, 1]))
    assert main(["info", str(tmp_path / "a_bbox.npy"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["boxes_per_class"] == {"car": 1, "pedestrian": 2} and info["label_timestamps"] == 2


def test_info_table_output(tmp_path, capsys):
    write_dat(tmp_path / "a_td.dat", random_events(10))
    assert main(["info", str(tmp_path / "a_td.dat")]) == 0
    assert "events" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name, content", [("missing.dat", None), ("bad.raw", b"\x00\x01garbage"), ("trunc.npy", b"\x93NUMPY\x01")]
)
def test_info_bad_input_is_a_clean_error(tmp_path, capsys, name, content):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    assert main(["info", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spquant info: error:") and "Traceback" not in err


@pytest.mark.parametrize(
    "name, fmt, events",
    [
        ("sample_ncars.dat", "dat", 2009),
        ("NCARS_obj_004397_td.dat", "dat", 4407),
        ("sparklers.raw", "evt2", 521_252),
        ("evt3_sample.raw", "evt3", 219_596),
        ("evt3_test_pedestrians.raw", "evt3", 5000),
    ],
)
def test_info_answers_on_every_real_fixture(real_file, capsys, name, fmt, events):
    assert main(["info", str(real_file(name)), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == fmt and info["events"] == events
