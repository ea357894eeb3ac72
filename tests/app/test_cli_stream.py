"""``spquant stream`` and :class:`app.stream_client.StreamClient`: the detections equal ``spquant predict``'s (a real
``spquant serve`` process and the in-process app), stdin RAW input, and every way a session ends badly."""

import io
import sys

import numpy as np
import pytest

from app.cli import main
from app.stream_client import StreamClient, StreamClientError, dat_payloads, windows_to_boxes
from data.events import concat_events
from data.formats.dat import write_dat
from data.formats.evt3 import encode_evt3
from data.formats.labels import BBOX_DTYPE, read_labels
from data.formats.raw import write_raw
from service.settings import Settings
from tests.helpers import random_events
from tests.service_support import TINY_HEIGHT as H
from tests.service_support import TINY_WIDTH as W
from tests.service_support import free_port, running_server, serve_process, tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="module")
def events():
    ev = random_events(1500, t_max=420_000, width=W, height=H, seed=11, t_min=31_000)
    return ev[(ev["t"] < 140_000) | (ev["t"] >= 260_000)]  # silent windows in the middle


@pytest.fixture(scope="module")
def recording(tmp_path_factory, events):
    path = tmp_path_factory.mktemp("rec") / "rec_td.dat"
    write_dat(path, events, width=W, height=H)
    return path


@pytest.fixture(scope="module")
def predicted(checkpoint, recording, tmp_path_factory):
    """What `spquant predict` writes for the recording (fake-quant checkpoint, as the server with INTEGER=0 runs)."""
    out = tmp_path_factory.mktemp("predict") / "dets.npy"
    assert main(["predict", str(recording), "--model", str(checkpoint), "--out", str(out), "--conf", "0"]) == 0
    dets = read_labels(out)
    assert len(dets) > 0  # a comparison of empty files would prove nothing
    return dets


@pytest.fixture(scope="module")
def served(checkpoint):
    """A real `spquant serve` process on a free port (the fake-quant model: what `spquant predict X.pt` runs)."""
    with serve_process(checkpoint, SPQUANT_INTEGER="0", OMP_WAIT_POLICY="PASSIVE") as port:
        yield f"ws://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def app_url(checkpoint):
    """The in-process app (uvicorn on a thread) with the fake-quant model; small limits for the error tests."""
    settings = Settings(model=checkpoint, integer=False, max_sessions=1, max_message_bytes=1 << 20, threads=1)
    with running_server(settings) as url:
        yield url.replace("http://", "ws://")


def _same(got, expected):
    assert got.dtype == BBOX_DTYPE and len(got) == len(expected)
    for name in BBOX_DTYPE.names:
        assert np.array_equal(got[name], expected[name]), name


@pytest.mark.parametrize("pace", ["max", "sensor"])
def test_stream_to_a_real_server_writes_what_predict_writes(served, recording, predicted, tmp_path, pace, capsys):
    out = tmp_path / "stream.npy"
    assert main(["stream", str(recording), "--url", served, "--conf", "0", "--pace", pace, "--out", str(out)]) == 0
    _same(read_labels(out), predicted)
    assert f"{len(predicted)} detections" in capsys.readouterr().out


@pytest.mark.parametrize("encoding", ["evt2", "evt3"])
def test_a_raw_file_streams_like_the_dat(app_url, events, predicted, tmp_path, encoding):
    write_raw(tmp_path / "rec.raw", events, encoding, W, H)
    out = tmp_path / "stream.npy"
    assert main(["stream", str(tmp_path / "rec.raw"), "--url", app_url, "--conf", "0", "--out", str(out)]) == 0
    _same(read_labels(out), predicted)


def _stdin(monkeypatch, data: bytes):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(data))))


def test_raw_words_on_stdin_are_forwarded(app_url, events, predicted, tmp_path, monkeypatch):
    _stdin(monkeypatch, encode_evt3(events))
    out = tmp_path / "stdin.npy"
    args = ["stream", "-", "--url", app_url, "--encoding", "evt3", "--width", str(W), "--height", str(H), "--conf",
            "0", "--out", str(out)]
    assert main(args) == 0
    _same(read_labels(out), predicted)


def test_stdin_with_a_raw_header_needs_no_options(app_url, events, predicted, tmp_path, monkeypatch):
    write_raw(tmp_path / "rec.raw", events, "evt2", W, H)
    _stdin(monkeypatch, (tmp_path / "rec.raw").read_bytes())  # `cat rec.raw | spquant stream -`
    out = tmp_path / "stdin.npy"
    assert main(["stream", "-", "--url", app_url, "--conf", "0", "--out", str(out)]) == 0
    _same(read_labels(out), predicted)


def test_client_class_iterates_windows_in_order(app_url, events, predicted):
    with StreamClient(app_url, width=W, height=H, score_threshold=0.0) as client:
        assert client.ack["window_us"] == 50_000 and client.ack["classes"] == ["car", "pedestrian"]
        windows = list(client.stream(dat_payloads([events], slice_us=7_000)))
    starts = [w["t_start"] for w in windows]
    assert starts == list(range(0, 450_000, 50_000))  # contiguous, silent windows included
    _same(windows_to_boxes(windows), predicted)


def _error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    return err


def test_connection_refused_is_a_one_line_error(recording, capsys):
    assert main(["stream", str(recording), "--url", f"ws://127.0.0.1:{free_port()}"]) == 2
    assert "cannot connect" in _error(capsys)


def test_wrong_api_key_closes_with_1008(checkpoint, recording, capsys):
    with running_server(Settings(model=checkpoint, integer=False, api_key="right")) as url:
        ws = url.replace("http://", "ws://")
        assert main(["stream", str(recording), "--url", ws, "--api-key", "wrong"]) == 2
        err = _error(capsys)
        assert "1008" in err and "API key" in err
        assert main(["stream", str(recording), "--url", ws, "--api-key", "right", "--conf", "0"]) == 0


def test_a_full_server_closes_with_1013(app_url, recording, capsys):
    with StreamClient(app_url):  # holds the one session the app allows
        assert main(["stream", str(recording), "--url", app_url]) == 2
    err = _error(capsys)
    assert "1013" in err and "busy" in err


def test_a_message_over_the_limit_closes_with_1009(checkpoint, events, capsys):
    big = np.repeat(events, 50)  # 75 000 events: one 600 kB message
    big["t"] = np.sort(big["t"])
    settings = Settings(model=checkpoint, integer=False, max_message_bytes=4096)
    with running_server(settings) as url, StreamClient(url.replace("http://", "ws://"), width=W, height=H) as client, \
            pytest.raises(StreamClientError) as info:
        list(client.stream(dat_payloads([big], slice_us=1_000_000)))
    assert info.value.code == 1009 and "too big" in str(info.value)


def test_an_idle_stream_closes_with_4408(checkpoint, tmp_path, capsys):
    ev = random_events(50, t_max=40_000, width=W, height=H, seed=1)
    late = random_events(50, t_max=1_540_000, width=W, height=H, seed=2, t_min=1_500_000)
    write_dat(tmp_path / "gap_td.dat", concat_events([ev, late]), width=W, height=H)
    with running_server(Settings(model=checkpoint, integer=False, idle_timeout_s=0.3)) as url:
        # at the sensor's pace the 1.5 s gap in the recording leaves the session idle past the timeout
        assert main(["stream", str(tmp_path / "gap_td.dat"), "--url", url.replace("http://", "ws://"), "--pace",
                     "sensor"]) == 2
    err = _error(capsys)
    assert "4408" in err and "idle" in err


def test_invalid_events_close_with_1007(app_url, events, capsys):
    # the events fall off the declared sensor
    with StreamClient(app_url, width=W // 2, height=H // 2) as client, pytest.raises(StreamClientError) as info:
        list(client.stream(dat_payloads([events])))
    assert info.value.code == 1007 and "outside" in str(info.value)


@pytest.mark.parametrize("argv, message", [
    (["missing.dat", "--url", "ws://127.0.0.1:1"], "missing.dat"),
    (["-", "--url", "ws://127.0.0.1:1"], "--encoding"),
    (["REC", "--url", "http://127.0.0.1:1"], "ws://"),
    (["REC", "--url", "ws://127.0.0.1:1", "--width", "10"], "--width and --height"),
    (["REC", "--url", "ws://127.0.0.1:1", "--encoding", "evt3"], "standard input"),
    (["REC", "--url", "ws://127.0.0.1:1", "--conf", "2"], "--conf"),
])
def test_bad_input_is_a_one_line_error(recording, argv, message, capsys, monkeypatch):
    _stdin(monkeypatch, b"")
    argv = [str(recording) if a == "REC" else a for a in argv]
    assert main(["stream", *argv]) == 2
    assert message in _error(capsys)


def test_a_source_that_fails_midway_ends_the_session_with_its_error(app_url, events):
    def payloads():
        yield from dat_payloads([events[:100]])
        raise ValueError("the camera went away")

    with StreamClient(app_url, width=W, height=H) as client, pytest.raises(ValueError, match="camera went away"):
        list(client.stream(payloads()))
