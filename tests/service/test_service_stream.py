"""WS /v1/stream: chunking, encodings, window order, isolation, control messages, limits and close codes."""

from contextlib import ExitStack

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from data.denoise import BackgroundActivityFilter
from data.events import make_events
from data.formats.dat import DatStreamDecoder, encode_dat_records, write_dat
from data.formats.evt2 import encode_evt2
from data.formats.evt3 import encode_evt3
from data.formats.recording import open_recording
from data.windows import iter_windows
from models.inference.loading import load_model
from models.inference.stream import StreamingDetector
from service.main import create_app
from service.schemas import window_json
from service.sessions import CloseCode
from service.settings import Settings
from tests.helpers import random_events
from tests.service_support import TINY_HEIGHT as H
from tests.service_support import TINY_WIDTH as W
from tests.service_support import tiny_checkpoint

ENCODERS = {"dat": lambda ev: encode_dat_records(ev).tobytes(), "evt2": encode_evt2, "evt3": encode_evt3}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")


def _app(checkpoint, **overrides):
    return create_app(Settings(model=checkpoint, score_threshold=0.0, threads=2, **overrides))


@pytest.fixture(scope="module")
def client(checkpoint):
    with TestClient(_app(checkpoint, max_sessions=4, max_message_bytes=1 << 16)) as c:
        yield c


def _recording(seed, width=W, height=H):
    ev = random_events(1200, t_max=420_000, width=width, height=height, seed=seed, t_min=31_000)
    return ev[(ev["t"] < 140_000) | (ev["t"] >= 260_000)]  # two silent windows in the middle


def _chunks(payload, seed):
    """``payload`` cut at random byte offsets (records and words split across messages), 1-byte pieces included."""
    rng = np.random.default_rng(seed)
    cuts = np.unique(np.concatenate([rng.integers(1, len(payload), 12), [1, 2, 3]]))
    return [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]


def _receive_until_ack(ws, command="flush"):
    """Detection messages up to the ack of ``command``; their ``latency_ms`` and ``firing_rate`` are checked and
    dropped (a REST window has neither)."""
    messages = []
    while True:
        message = ws.receive_json()
        if message["type"] == "ack" and message["command"] == command:
            return messages, message
        if message["type"] == "detections":
            latency = message.pop("latency_ms")
            assert isinstance(latency, float | int) and latency >= 0
            assert 0 <= message.pop("firing_rate") <= 1
        messages.append(message)


def _stream(ws, ev, encoding="dat", seed=0, config=None):
    """Stream a recording through an open socket and return its detection messages (after a final flush)."""
    if config is not None or encoding != "dat":
        ws.send_json({"type": "config", "encoding": encoding, **(config or {})})
        assert ws.receive_json()["command"] == "config"
    for chunk in _chunks(ENCODERS[encoding](ev), seed):
        ws.send_bytes(chunk)
    ws.send_json({"type": "flush"})
    messages, _ = _receive_until_ack(ws)
    return messages


def _expected(checkpoint, source, width=W, height=H):
    """The messages `spquant predict`'s path gives: StreamingDetector.run over iter_windows of events or a file, with
    the model the service runs (a quantized checkpoint as the integer runtime: `spquant predict --model X.spq`)."""
    detector = StreamingDetector(load_model(checkpoint, integer=True), conf_thres=0.0).for_sensor(width, height)
    source = [source] if isinstance(source, np.ndarray) else source
    return [{"type": "detections", **window_json(w.t_start, w.t_end, boxes, ["car", "pedestrian"])}
            for w, boxes in detector.run(iter_windows(source, detector.window_us))]


def test_dat_stream_decoder_joins_records_split_anywhere():
    ev = random_events(500, width=W, height=H)
    payload = encode_dat_records(ev).tobytes()
    decoder = DatStreamDecoder()
    parts = [decoder.decode(chunk) for chunk in _chunks(payload, 3)]
    assert np.array_equal(np.concatenate(parts), ev) and decoder.pending_bytes == 0


@pytest.mark.parametrize("encoding", ["dat", "evt2", "evt3"])
def test_stream_in_any_chunking_equals_rest_and_streaming_detector(client, checkpoint, tmp_path, encoding):
    ev = _recording(1)
    with client.websocket_connect("/v1/stream") as ws:
        messages = _stream(ws, ev, encoding, seed=7)
    starts = [m["t_start"] for m in messages]
    assert starts == list(range(0, 450_000, 50_000))  # in order, contiguous, silent windows included
    assert messages == _expected(checkpoint, ev)
    rest = client.post("/v1/detect", content=encode_dat_records(ev).tobytes(),
                       headers={"content-type": "application/octet-stream"}).json()
    assert [{"type": "detections", **w} for w in rest["windows"]] == messages
    if encoding == "dat":  # and the file route of `spquant predict`: a recording read from disk
        write_dat(tmp_path / "rec_td.dat", ev, width=W, height=H)
        assert _expected(checkpoint, open_recording(tmp_path / "rec_td.dat")) == messages


def test_two_interleaved_sessions_get_exactly_what_each_gets_alone(client):
    a, b = _recording(2), _recording(3)
    with client.websocket_connect("/v1/stream") as ws:
        alone_a = _stream(ws, a)
    with client.websocket_connect("/v1/stream") as ws:
        alone_b = _stream(ws, b, "evt3")
    with client.websocket_connect("/v1/stream") as wa, client.websocket_connect("/v1/stream") as wb:
        wb.send_json({"type": "config", "encoding": "evt3"})
        wb.receive_json()
        chunks_a, chunks_b = _chunks(ENCODERS["dat"](a), 5), _chunks(ENCODERS["evt3"](b), 6)
        for i in range(max(len(chunks_a), len(chunks_b))):
            if i < len(chunks_a):
                wa.send_bytes(chunks_a[i])
            if i < len(chunks_b):
                wb.send_bytes(chunks_b[i])
        wa.send_json({"type": "flush"})
        wb.send_json({"type": "flush"})
        together_a, _ = _receive_until_ack(wa)
        together_b, _ = _receive_until_ack(wb)
    # batched with the other session, the float head may round differently in the last bit; nothing else may differ
    _assert_same_detections(together_a, alone_a)
    _assert_same_detections(together_b, alone_b)
    assert alone_a != alone_b


def _assert_same_detections(got, expected):
    assert [{**m, "detections": len(m["detections"])} for m in got] == [
        {**m, "detections": len(m["detections"])} for m in expected]
    for message, reference in zip(got, expected, strict=True):
        for det, ref in zip(message["detections"], reference["detections"], strict=True):
            assert det["class_name"] == ref["class_name"]
            numbers = ("x", "y", "w", "h", "score")
            assert [det[k] for k in numbers] == pytest.approx([ref[k] for k in numbers], rel=1e-5, abs=1e-4)


def test_windows_arrive_as_soon_as_an_event_reaches_their_end(client):
    ev = _recording(4)
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(encode_dat_records(ev[ev["t"] < 100_000]).tobytes())  # windows 0 and 50k still open at 99_999
        ws.send_bytes(encode_dat_records(ev[(ev["t"] >= 100_000) & (ev["t"] < 101_000)]).tobytes())
        ws.send_json({"type": "flush"})
        messages, ack = _receive_until_ack(ws)
    assert [m["t_start"] for m in messages] == [0, 50_000, 100_000] and ack["windows"] == 1


def test_reset_gives_a_fresh_state_and_time_base(client):
    ev = _recording(5)
    with client.websocket_connect("/v1/stream") as ws:
        first = _stream(ws, ev)
        ws.send_json({"type": "reset"})
        assert ws.receive_json() == {"type": "ack", "command": "reset"}
        again = _stream(ws, ev)  # the same timestamps again: accepted after a reset, and the same answers
        ws.send_json({"type": "reset"})
        ws.receive_json()
        ws.send_json({"type": "config", "encoding": "evt2"})  # config is allowed again after a reset
        assert ws.receive_json()["encoding"] == "evt2"
    assert first == again


def test_flush_then_continue_keeps_the_state(client, checkpoint):
    ev = _recording(6)
    with client.websocket_connect("/v1/stream") as ws:
        whole = _stream(ws, ev)
    with client.websocket_connect("/v1/stream") as ws:
        # a flush right at a window boundary changes nothing: the carried state goes on
        head, tail = ev[ev["t"] < 200_000], ev[ev["t"] >= 200_000]
        split = _stream(ws, head) + _stream(ws, tail)
    assert split == whole == _expected(checkpoint, ev)


def test_sensor_size_from_config_is_letterboxed(client, checkpoint):
    ev = _recording(8, width=640, height=480)
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_json({"type": "config", "width": 640, "height": 480, "score_threshold": 0.0})
        ack = ws.receive_json()
        assert (ack["width"], ack["height"], ack["window_us"], ack["classes"]) == (640, 480, 50_000,
                                                                                   ["car", "pedestrian"])
        messages = _stream(ws, ev)
    assert messages == _expected(checkpoint, ev, 640, 480)


def test_close_command_flushes_and_closes_normally(client):
    ev = _recording(9)
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(encode_dat_records(ev).tobytes())
        ws.send_json({"type": "close"})
        messages, ack = _receive_until_ack(ws, "close")
        assert ack["windows"] == 1 and messages[-1]["t_start"] == 400_000
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == CloseCode.NORMAL


def _closed_with(ws, code, needle):
    error = ws.receive_json()
    while error["type"] == "detections":  # windows completed before the bad message still arrive
        error = ws.receive_json()
    assert error["type"] == "error" and error["code"] == code and needle in error["detail"], error
    with pytest.raises(WebSocketDisconnect) as closed:
        ws.receive_json()
    assert closed.value.code == code and needle[:20] in closed.value.reason


@pytest.mark.parametrize(
    ("send", "code", "needle"),
    [
        (lambda ws: ws.send_text("{nope"), CloseCode.UNSUPPORTED_DATA, "not JSON"),
        (lambda ws: ws.send_json({"type": "dance"}), CloseCode.UNSUPPORTED_DATA, "bad control message"),
        (lambda ws: ws.send_json({"type": "config", "encoding": "evt9"}), CloseCode.UNSUPPORTED_DATA, "encoding"),
        (lambda ws: ws.send_json({"type": "config", "width": 640}), CloseCode.UNSUPPORTED_DATA, "both width"),
        (lambda ws: ws.send_json({"type": "config", "colour": "red"}), CloseCode.UNSUPPORTED_DATA, "colour"),
        (lambda ws: (ws.send_bytes(encode_dat_records(random_events(5, width=W, height=H)).tobytes()),
                     ws.send_json({"type": "config"})), CloseCode.POLICY_VIOLATION, "before any event data"),
        (lambda ws: ws.send_bytes(encode_dat_records(random_events(5, width=300, height=H, seed=4)).tobytes()),
         CloseCode.INVALID_PAYLOAD, "outside a sensor of 96x64"),
        (lambda ws: (ws.send_bytes(encode_dat_records(random_events(5, t_min=500_000, width=W, height=H)).tobytes()),
                     ws.send_bytes(encode_dat_records(random_events(5, t_max=1000, width=W, height=H)).tobytes())),
         CloseCode.INVALID_PAYLOAD, "must not decrease"),
        (lambda ws: ws.send_bytes(encode_dat_records(make_events([5, 2**32 - 1], [1, 1], [1, 1], [0, 1])).tobytes()),
         CloseCode.INVALID_PAYLOAD, "timestamp jump"),
        (lambda ws: ws.send_bytes(b"\x00" * (1 << 17)), CloseCode.MESSAGE_TOO_BIG, "limit"),
    ],
)
def test_bad_input_closes_the_session_with_a_clear_code(client, send, code, needle):
    with client.websocket_connect("/v1/stream") as ws:
        send(ws)
        _closed_with(ws, code, needle)
    with client.websocket_connect("/v1/stream") as ws:  # the server keeps serving
        assert _stream(ws, _recording(0))


def test_sessions_are_bounded_and_counted(client):
    with client.websocket_connect("/v1/stream") as a, client.websocket_connect("/v1/stream") as b, \
            client.websocket_connect("/v1/stream") as c, client.websocket_connect("/v1/stream") as d:
        for ws in (a, b, c, d):
            ws.send_json({"type": "reset"})
            ws.receive_json()
        assert client.get("/healthz").json()["active_sessions"] == 4
        with client.websocket_connect("/v1/stream") as refused:
            _closed_with(refused, CloseCode.TRY_AGAIN_LATER, "server full")
    assert client.get("/healthz").json()["active_sessions"] == 0
    text = client.get("/metrics").text
    assert 'spquant_stream_sessions_total{outcome="refused"}' in text and "spquant_active_sessions 0.0" in text


def test_idle_sessions_are_closed(checkpoint):
    with TestClient(_app(checkpoint, idle_timeout_s=0.2)) as c, c.websocket_connect("/v1/stream") as ws:
        _closed_with(ws, CloseCode.IDLE_TIMEOUT, "idle for 0.2 s")


def test_api_key_on_the_stream(checkpoint):
    with TestClient(_app(checkpoint, api_key="k3y")) as c:
        with c.websocket_connect("/v1/stream") as ws:
            _closed_with(ws, CloseCode.POLICY_VIOLATION, "API key")
        with c.websocket_connect("/v1/stream?api_key=k3y") as ws:
            assert _stream(ws, _recording(0))
        with c.websocket_connect("/v1/stream", headers={"X-API-Key": "k3y"}) as ws:
            assert _stream(ws, _recording(0))


def test_a_server_fault_closes_only_that_session(client, monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("boom")

    engine = client.app.state.engine
    monkeypatch.setattr(engine, "step", broken)
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(encode_dat_records(_recording(0)).tobytes())
        _closed_with(ws, CloseCode.INTERNAL_ERROR, "internal server error")
    assert "stream session failed" in caplog.text
    monkeypatch.undo()
    with client.websocket_connect("/v1/stream") as ws:
        assert _stream(ws, _recording(0))


def test_concurrent_sessions_share_forward_passes(checkpoint):
    recordings = [_recording(seed) for seed in range(4)]
    alone = [_expected(checkpoint, ev) for ev in recordings]
    with TestClient(_app(checkpoint, max_batch=8)) as c:
        with ExitStack() as stack:
            sockets = [stack.enter_context(c.websocket_connect("/v1/stream")) for _ in recordings]
            for ws, ev in zip(sockets, recordings, strict=True):  # all sessions busy at once
                ws.send_bytes(encode_dat_records(ev).tobytes())
                ws.send_json({"type": "flush"})
            for ws, expected in zip(sockets, alone, strict=True):
                _assert_same_detections(_receive_until_ack(ws)[0], expected)
        text = c.get("/metrics").text
    batched = sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("spquant_batch_windows_sum"))
    assert batched == sum(len(e) for e in alone)  # every stream window went through the batcher


def test_denoise_setting_filters_streams_and_requests_like_predict(checkpoint):
    """SPQUANT_DENOISE_US: the stream and REST answers are those of the denoised events (`predict --denoise-us`)."""
    ev = _recording(5)
    kept = BackgroundActivityFilter(W, H, 5_000)(ev)
    assert 0 < len(kept) < len(ev)  # sparse random events: the filter drops some and keeps some
    with TestClient(_app(checkpoint, denoise_us=5_000)) as c:
        with c.websocket_connect("/v1/stream") as ws:
            messages = _stream(ws, ev, seed=3)
            ws.send_json({"type": "reset"})  # a fresh filter: the same events give the same answer again
            ws.receive_json()
            again = _stream(ws, ev, seed=4)
        rest = c.post("/v1/detect", content=encode_dat_records(ev).tobytes(),
                      headers={"content-type": "application/octet-stream"}).json()
    expected = _expected(checkpoint, kept)
    assert messages[:len(expected)] == expected and again == messages
    assert [{"type": "detections", **w} for w in rest["windows"]][:len(expected)] == expected
    assert rest["events"] == len(ev)  # events received, before the filter
    with pytest.raises(ValueError):
        Settings(denoise_us=-1)
