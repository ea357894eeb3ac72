import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data.errors import EventValidationError, RecordingFormatError
from data.formats.dat import DatRecording, DatWriter, write_dat
from tests.helpers import random_events


def test_round_trip_with_geometry(tmp_path):
    ev = random_events(5000, width=640, height=480)
    path = tmp_path / "a_td.dat"
    write_dat(path, ev, width=640, height=480)
    rec = DatRecording(path)
    assert (rec.width, rec.height) == (640, 480)
    assert len(rec) == 5000 and rec.t_first == ev["t"][0] and rec.t_last == ev["t"][-1]
    assert np.array_equal(rec.read(), ev)


def test_writer_output_is_deterministic_and_chunked_writes_equal_one_write(tmp_path):
    ev = random_events(3000)
    write_dat(tmp_path / "one.dat", ev)
    with DatWriter(tmp_path / "two.dat") as writer:
        for part in np.array_split(ev, 7):
            writer.write(part)
    assert (tmp_path / "one.dat").read_bytes() == (tmp_path / "two.dat").read_bytes()


def test_writer_rejects_out_of_order_chunks_and_off_sensor_events(tmp_path):
    ev = random_events(100)
    with DatWriter(tmp_path / "x.dat") as writer:
        writer.write(ev[50:])
        with pytest.raises(EventValidationError, match="before the previous chunk"):
            writer.write(ev[:50])
    with DatWriter(tmp_path / "y.dat", width=100, height=100) as writer, pytest.raises(EventValidationError):
        writer.write(random_events(100, width=304))


def test_third_party_reader_accepts_our_files(tmp_path):
    expelliarmus = pytest.importorskip("expelliarmus")
    ev = random_events(2000)
    write_dat(tmp_path / "x_td.dat", ev)
    theirs = expelliarmus.Wizard(encoding="dat").read(tmp_path / "x_td.dat")
    for field in "txyp":
        assert np.array_equal(theirs[field].astype(np.int64), ev[field].astype(np.int64))


@settings(max_examples=40, deadline=None)
@given(t0=st.integers(-10, 120_000), span=st.integers(0, 120_000))
def test_time_range_read_equals_filter(tmp_path_factory, t0, span):
    path = tmp_path_factory.getbasetemp() / "range_td.dat"
    ev = random_events(3000, t_max=100_000, seed=3)
    if not path.exists():
        write_dat(path, ev)
    rec = DatRecording(path)
    t1 = t0 + span
    expected = ev[(ev["t"] >= t0) & (ev["t"] < t1)]
    assert np.array_equal(rec.read(t0, t1), expected)
    chunks = list(rec.iter_chunks(t0, t1, chunk_events=97))
    assert np.array_equal(np.concatenate(chunks) if chunks else expected[:0], expected)


def test_time_range_read_does_not_decode_whole_file(tmp_path, monkeypatch):
    ev = random_events(200_000, t_max=60_000_000)
    write_dat(tmp_path / "big.dat", ev)
    rec = DatRecording(tmp_path / "big.dat")
    decoded = []
    import data.formats.dat as dat

    original = dat.decode_dat_records
    monkeypatch.setattr(dat, "decode_dat_records", lambda r: decoded.append(len(r)) or original(r))
    part = rec.read(30_000_000, 30_050_000)
    assert sum(decoded) == len(part) < 1000


def test_empty_file_with_header(tmp_path):
    write_dat(tmp_path / "e.dat", random_events(0))
    rec = DatRecording(tmp_path / "e.dat")
    assert len(rec) == 0 and rec.t_first is None and len(rec.read()) == 0 and list(rec.iter_chunks()) == []


def test_truncated_file_is_a_typed_error(tmp_path):
    write_dat(tmp_path / "t.dat", random_events(10))
    data = (tmp_path / "t.dat").read_bytes()
    (tmp_path / "t.dat").write_bytes(data[:-3])
    with pytest.raises(RecordingFormatError, match="truncated DAT file"):
        DatRecording(tmp_path / "t.dat")
    (tmp_path / "h.dat").write_bytes(b"% Version 2\n")
    with pytest.raises(RecordingFormatError, match="truncated after the header"):
        DatRecording(tmp_path / "h.dat")


def test_unknown_event_type_is_rejected(tmp_path):
    (tmp_path / "b.dat").write_bytes(b"% Version 2\n" + bytes([0x20, 16]) + bytes(32))
    with pytest.raises(RecordingFormatError, match="unsupported DAT event type"):
        DatRecording(tmp_path / "b.dat")


def test_headerless_legacy_file(tmp_path):
    ev = random_events(50)
    write_dat(tmp_path / "full.dat", ev)
    full = DatRecording(tmp_path / "full.dat")
    (tmp_path / "bare.dat").write_bytes((tmp_path / "full.dat").read_bytes()[full.data_offset :])
    assert np.array_equal(DatRecording(tmp_path / "bare.dat").read(), ev)


@pytest.mark.parametrize(
    "name, count, on, x_max, y_max, t_last",
    [("sample_ncars.dat", 2009, 1350, 77, 41, 99_952), ("NCARS_obj_004397_td.dat", 4407, 1671, 53, 60, 99_937)],
)
def test_real_dat_fixtures_match_source_and_expelliarmus(real_file, name, count, on, x_max, y_max, t_last):
    path = real_file(name)
    ev = DatRecording(path).read()
    assert len(ev) == count and int(ev["p"].sum()) == on
    assert ev["x"].max() == x_max and ev["y"].max() == y_max and ev["t"][0] == 0 and ev["t"][-1] == t_last
    expelliarmus = pytest.importorskip("expelliarmus")
    theirs = expelliarmus.Wizard(encoding="dat").read(path)
    for field in "txyp":
        assert np.array_equal(theirs[field].astype(np.int64), ev[field].astype(np.int64))
