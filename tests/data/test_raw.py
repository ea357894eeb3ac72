import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data.errors import RecordingFormatError
from data.events import make_events
from data.formats.evt2 import Evt2Decoder, encode_evt2
from data.formats.evt3 import Evt3Decoder, encode_evt3
from data.formats.raw import RawRecording, write_raw
from tests.helpers import random_events

DECODERS = {"evt2": (Evt2Decoder, encode_evt2), "evt3": (Evt3Decoder, encode_evt3)}


@pytest.mark.parametrize("encoding", ["evt2", "evt3"])
def test_encode_decode_round_trip(encoding):
    decoder, encode = DECODERS[encoding]
    ev = random_events(20_000, t_max=3_000_000, width=1280, height=720)
    assert np.array_equal(decoder().decode(encode(ev)), ev)


@pytest.mark.parametrize("encoding", ["evt2", "evt3"])
def test_time_high_wrap_around_and_long_silences(encoding):
    decoder, encode = DECODERS[encoding]
    # EVT3 time wraps every 2**24 µs (16.8 s): cross it several times, including silences longer than the period.
    t = np.array([0, 5, 16_777_215, 16_777_216, 16_777_300, 40_000_000, 100_000_000, 100_000_001, 2**34 + 7])
    ev = make_events(t, np.arange(len(t)), np.arange(len(t)) * 2, np.arange(len(t)) % 2)
    assert np.array_equal(decoder().decode(encode(ev)), ev)


@pytest.mark.parametrize("encoding", ["evt2", "evt3"])
@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(0, 40_000), max_size=12))
def test_chunking_at_any_byte_gives_the_same_events(encoding, cuts):
    decoder_cls, encode = DECODERS[encoding]
    ev = random_events(2000, t_max=50_000_000, seed=7)
    data = encode(ev)
    bounds = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    decoder = decoder_cls()
    parts = [decoder.decode(data[a:b]) for a, b in itertools.pairwise(bounds)]
    assert np.array_equal(np.concatenate(parts), ev)
    assert decoder.pending_bytes == 0


def test_evt3_events_before_time_high_or_y_are_dropped_and_counted():
    words = np.array([0x2005, 0x8001, 0x2006, 0x0003, 0x6010, 0x2807], dtype="<u2")
    decoder = Evt3Decoder()
    ev = decoder.decode(words.tobytes())
    assert decoder.dropped == 2
    assert ev.tolist() == [((1 << 12) | 0x10, 7, 3, 1)]


def test_evt3_vector_words():
    # y=4, t=0x001_002; base x=100 with ON polarity; VECT_12 bits 0 and 11; VECT_8 bit 1 → x = 100, 111, 113
    words = np.array([0x8001, 0x6002, 0x0004, 0x3800 | 100, 0x4000 | 0x801, 0x5000 | 0x2], dtype="<u2")
    ev = Evt3Decoder().decode(words.tobytes())
    assert ev["x"].tolist() == [100, 111, 113] and set(ev["y"]) == {4} and set(ev["p"]) == {1}
    assert set(ev["t"]) == {(1 << 12) | 2}


def test_write_raw_header_geometry_and_reader(tmp_path):
    ev = random_events(1000, width=640, height=480)
    write_raw(tmp_path / "a.raw", ev, "evt3", 640, 480)
    rec = RawRecording(tmp_path / "a.raw")
    assert (rec.format, rec.width, rec.height) == ("evt3", 640, 480)
    assert np.array_equal(rec.read(), ev)
    t0, t1 = int(ev["t"][100]), int(ev["t"][600])
    assert np.array_equal(rec.read(t0, t1), ev[(ev["t"] >= t0) & (ev["t"] < t1)])


def test_truncated_and_unknown_raw_are_typed_errors(tmp_path):
    write_raw(tmp_path / "a.raw", random_events(10), "evt2")
    data = (tmp_path / "a.raw").read_bytes()
    (tmp_path / "b.raw").write_bytes(data[:-1])
    with pytest.raises(RecordingFormatError, match="truncated EVT2"):
        RawRecording(tmp_path / "b.raw")
    (tmp_path / "c.raw").write_bytes(b"% evt 2.1\n" + bytes(16))
    with pytest.raises(RecordingFormatError, match="unsupported RAW encoding"):
        RawRecording(tmp_path / "c.raw")
    (tmp_path / "d.raw").write_bytes(b"% date 2020\n" + bytes(16))
    with pytest.raises(RecordingFormatError, match="without a known encoding"):
        RawRecording(tmp_path / "d.raw")


def test_real_evt2_matches_expelliarmus(real_file):
    path = real_file("sparklers.raw")
    rec = RawRecording(path)
    ev = rec.read()
    assert (rec.format, rec.width, rec.height) == ("evt2", 640, 480)
    assert len(ev) == 521_252 and ev["t"][0] == 913_716_224 and ev["t"][-1] == 913_812_095
    expelliarmus = pytest.importorskip("expelliarmus")
    theirs = expelliarmus.Wizard(encoding="evt2").read(path)
    for field in "txyp":
        assert np.array_equal(theirs[field].astype(np.int64), ev[field].astype(np.int64))


@pytest.mark.parametrize(
    "name, count, t_first, t_last, on, x_range, y_range",
    [
        ("evt3_sample.raw", 219_596, 11_718_656, 11_727_457, 115_532, (0, 1279), (0, 719)),
        ("evt3_test_pedestrians.raw", 5000, 5_840_504, 5_885_714, 2894, (11, 1279), (22, 698)),
    ],
)
def test_real_evt3_matches_source_facts(real_file, name, count, t_first, t_last, on, x_range, y_range):
    rec = RawRecording(real_file(name))
    ev = rec.read()
    assert (rec.format, rec.width, rec.height) == ("evt3", 1280, 720)
    assert len(ev) == count and int(ev["p"].sum()) == on
    assert (ev["t"][0], ev["t"][-1]) == (t_first, t_last) and np.all(np.diff(ev["t"]) >= 0)
    assert (ev["x"].min(), ev["x"].max()) == x_range and (ev["y"].min(), ev["y"].max()) == y_range
    # The file's TIME_HIGH words stop at 2863, which bounds every timestamp (expelliarmus 1.1.12 overshoots).
    assert ev["t"].max() < 2864 * 4096


def test_real_evt3_addresses_match_expelliarmus(real_file):
    expelliarmus = pytest.importorskip("expelliarmus")
    path = real_file("evt3_sample.raw")
    ev = RawRecording(path).read()
    theirs = expelliarmus.Wizard(encoding="evt3").read(path)
    for field in "xyp":
        assert np.array_equal(theirs[field].astype(np.int64), ev[field].astype(np.int64))
