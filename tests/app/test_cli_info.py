import json

import numpy as np
import pytest

from app.cli import main
from app.commands.info import checked_chunks
from data.errors import EventValidationError
from data.formats.dat import encode_dat_records, write_dat
from data.formats.labels import make_boxes, write_labels
from data.formats.recording import open_recording
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


def _dat_with_header(path, events, width, height):
    """A DAT file declaring ``width`` x ``height`` whatever its events hold (write_dat would refuse such events)."""
    path.write_bytes(f"% Width {width}\n% Height {height}\n".encode() + bytes([0, 8])
                     + encode_dat_records(events).tobytes())
    return path


def _one_line_error(capsys, command):
    err = capsys.readouterr().err
    assert err.startswith(f"spquant {command}: error:") and "Traceback" not in err and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("command", ["info", "predict"])
def test_random_bytes_named_dat_are_refused(tmp_path, capsys, command):
    path = tmp_path / "noise.dat"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    extra = ["--out", str(tmp_path / "d.npy")] if command == "predict" else []
    assert main([command, str(path), *extra]) == 2
    err = _one_line_error(capsys, command)
    assert str(path) in err and "no '%' header" in err and ("must not decrease" in err or "outside" in err)
    assert not (tmp_path / "d.npy").exists()


def test_events_off_the_declared_sensor_are_refused(tmp_path, capsys):
    ev = random_events(500, width=200, height=100, seed=1)
    ev["x"][321] = 150
    path = _dat_with_header(tmp_path / "a_td.dat", ev, 120, 100)
    first = int(np.flatnonzero(ev["x"] >= 120)[0])
    assert main(["info", str(path)]) == 2
    err = _one_line_error(capsys, "info")
    assert f"event {first} has x={int(ev['x'][first])}, outside a sensor of 120x100" in err
    assert "header" not in err.split(str(path))[-1]  # the file has a header: no hint about a missing one


def test_events_out_of_time_order_are_refused_with_their_index_in_the_file(tmp_path, capsys):
    ev = random_events(500, seed=2)
    ev["t"][400] = ev["t"][399] - 1
    path = _dat_with_header(tmp_path / "a_td.dat", ev, 304, 240)
    assert main(["info", str(path)]) == 2
    assert "must not decrease: event 400 has t=" in _one_line_error(capsys, "info")


def test_time_order_is_checked_across_chunks(tmp_path):
    ev = random_events(100, seed=3)
    write_dat(tmp_path / "a_td.dat", ev)
    recording = open_recording(tmp_path / "a_td.dat")
    late, early = ev[50:], ev[:50]
    with pytest.raises(EventValidationError, match="event 50 has t="):
        list(checked_chunks(recording, [late, early]))
    assert sum(len(c) for c in checked_chunks(recording, [early, late])) == 100


def test_a_valid_headerless_dat_still_works(tmp_path, capsys):
    ev = random_events(300, seed=4)
    path = tmp_path / "bare_td.dat"
    path.write_bytes(encode_dat_records(ev).tobytes())
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["events"] == 300 and info["time_ordered"] is True and (info["width"], info["height"]) == (304, 240)
