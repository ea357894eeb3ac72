"""Serving an exported model without torch: a real ``spquant serve`` process in which importing torch, torchvision or
ultralytics fails serves the bundled model's ``.spq`` on the numpy engine, with the torch service's detections.

The server process gets a bootstrap (``python -c``) that puts an import blocker first on ``sys.meta_path`` and then
runs the CLI's ``serve``; the blocker logs every name it refuses, so the test also sees who tried.
"""

import asyncio
import json
import sys
import textwrap
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.stream_client import StreamClient, dat_payloads
from data.errors import EventValidationError
from data.events import concat_events
from data.formats.dat import encode_dat_records
from data.formats.recording import open_recording
from data.windows import iter_windows
from models.inference.export import export_model
from models.inference.numpy_runtime import NumpyRuntime
from models.inference.runtime import Runtime
from models.inference.stream import SpikeMeter, StreamingDetector, WindowJob, step_batch
from models.networks.checkpoint import load_detector
from service.batching import run_isolated
from service.inference import DetectionEngine
from service.main import create_app, serving_model
from service.metrics import Metrics
from service.schemas import window_json
from service.settings import Settings
from service.workers import InferenceProcess, RemoteState
from tests.conftest import REPO
from tests.helpers import SAMPLE
from tests.service_support import serve_process

BOOTSTRAP = textwrap.dedent("""
    import os
    import sys

    BLOCKED = ("torch", "torchvision", "ultralytics")

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                with open(os.environ["BLOCKED_LOG"], "a") as log:
                    log.write(name + "\\n")
                raise ImportError(f"blocked import of {name}")
            return None

    sys.meta_path.insert(0, Block())

    from app.cli import main

    sys.exit(main(["serve"]))
""")
STREAM_WINDOWS = 36  # the first windows of the recording, streamed (window 30 has boxes)


@pytest.fixture(scope="module")
def spq(tmp_path_factory):
    return export_model(load_detector(REPO / "models" / "weights" / "spquant-n.pt"),
                        tmp_path_factory.mktemp("spq") / "bundled.spq")


@pytest.fixture(scope="module")
def events():
    return concat_events(list(open_recording(SAMPLE).iter_chunks()))


def torch_free_server(model: Path, log: Path, timeout_s: float = 120.0):
    """``spquant serve`` of ``model`` with torch, torchvision and ultralytics blocked (a context yielding its port)
    and the default runtime, auto, which serves a .spq on the numpy engine."""
    return serve_process(model, timeout_s, [sys.executable, "-c", BOOTSTRAP], unset=("SPQUANT_RUNTIME",),
                         SPQUANT_THREADS="1", OMP_WAIT_POLICY="PASSIVE", BLOCKED_LOG=str(log))


@pytest.fixture(scope="module")
def server(spq, tmp_path_factory):
    log = tmp_path_factory.mktemp("blocked") / "blocked.txt"
    with torch_free_server(spq, log) as port:
        yield f"127.0.0.1:{port}", log


@pytest.fixture(scope="module")
def torch_service(spq):
    """The same .spq served in-process on the torch runtime (today's engine)."""
    with TestClient(create_app(Settings(model=spq, runtime="torch", threads=1))) as client:
        yield client


def _get(address: str, path: str) -> dict:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=30) as response:
        return json.load(response)


def _post_records(address: str, body: bytes) -> dict:
    request = urllib.request.Request(f"http://{address}/v1/detect", data=body, method="POST",
                                     headers={"content-type": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=300) as response:
        assert response.status == 200
        return json.load(response)


def assert_same_windows(got: list[dict], expected: list[dict]) -> None:
    """Window dicts: same windows, classes and count of boxes; coordinates and scores to float32 rounding."""
    assert [(w["t_start"], w["t_end"]) for w in got] == [(w["t_start"], w["t_end"]) for w in expected]
    for a, b in zip(got, expected, strict=True):
        assert len(a["detections"]) == len(b["detections"]), a["t_start"]
        for da, db in zip(a["detections"], b["detections"], strict=True):
            assert (da["class_id"], da["class_name"]) == (db["class_id"], db["class_name"])
            assert all(abs(da[k] - db[k]) <= 1e-3 for k in ("x", "y", "w", "h")), (da, db)
            assert abs(da["score"] - db["score"]) <= 1e-6, (da, db)


def test_health_and_model_report_the_numpy_engine(server, torch_service):
    address, log = server
    info = _get(address, "/v1/model")
    assert info["runtime"] == "numpy"
    expected = torch_service.get("/v1/model").json()
    assert expected["runtime"] == "integer"
    assert {**info, "runtime": "integer"} == expected  # sizes, levels, sensor: the same figures without torch
    assert (info["sensor_width"], info["sensor_height"]) == (304, 240)
    # no import of a blocked package was even tried: auto serves a .spq on numpy without probing for torch
    assert not log.exists()


def test_detect_answers_what_the_torch_service_answers(server, torch_service, events):
    address, _ = server
    body = encode_dat_records(events).tobytes()  # no width/height: the model's sensor, 304x240, is the default
    got = _post_records(address, body)
    response = torch_service.post("/v1/detect", content=body, headers={"content-type": "application/octet-stream"})
    assert response.status_code == 200
    expected = response.json()
    assert (got["width"], got["height"], got["events"]) == (304, 240, len(events))
    assert {k: v for k, v in got.items() if k != "windows"} == {k: v for k, v in expected.items() if k != "windows"}
    assert len(got["windows"]) == 60 and sum(len(w["detections"]) for w in got["windows"]) > 50
    assert_same_windows(got["windows"], expected["windows"])


def test_a_stream_gets_the_detections_and_firing_rates_of_the_torch_runtime(server, spq, events):
    address, log = server
    head = events[events["t"] < STREAM_WINDOWS * 50_000]
    with StreamClient(f"ws://{address}") as client:  # no sensor size: the model's
        assert client.ack["width"] == 304 and client.ack["height"] == 240
        windows = list(client.stream(dat_payloads([head])))
    assert len(windows) == STREAM_WINDOWS
    # the torch runtime, window by window with its state carried, as the service steps a lone stream
    detector = StreamingDetector(Runtime.load(spq)).for_sensor(304, 240)
    state, expected, rates = None, [], []
    for window in iter_windows([head], detector.window_us):
        meter = SpikeMeter()
        ((boxes, state),) = step_batch([WindowJob(detector, window.events, window.t_start, state)], meter)
        expected.append({"t_start": window.t_start, "t_end": window.t_end, "detections": [
            {"x": float(b["x"]), "y": float(b["y"]), "w": float(b["w"]), "h": float(b["h"]),
             "class_id": int(b["class_id"]), "class_name": ("car", "pedestrian")[b["class_id"]],
             "score": float(b["class_confidence"])} for b in boxes]})
        rates.extend(meter.rates())
    assert_same_windows(windows, expected)
    assert sum(len(w["detections"]) for w in windows) > 0
    # same spikes (the states are bit-identical), so the same rates (the message rounds them to 6 decimals)
    assert [w["firing_rate"] for w in windows] == [round(rate, 6) for rate in rates]
    assert not log.exists()


def test_numpy_runtime_in_process_and_a_checkpoint_it_cannot_run(spq, tmp_path):
    with TestClient(create_app(Settings(model=spq, runtime="numpy", threads=1))) as client:
        assert client.get("/v1/model").json()["runtime"] == "numpy"
        response = client.post("/v1/detect", content=b"\x00" * 7, headers={"content-type": "application/octet-stream"})
        assert response.status_code == 400  # a torn record: still the client's error on the numpy engine
    with pytest.raises(ValueError, match="needs torch"), TestClient(create_app(Settings(
            model=REPO / "models" / "weights" / "spquant-n.pt", runtime="numpy"))):
        pass


def _windows_until_flushed(ws) -> list[dict]:
    """The detection messages up to the flush's ack, without their latency."""
    messages = []
    while (message := ws.receive_json())["type"] != "ack":
        message.pop("latency_ms")
        messages.append(message)
    return messages


def test_concurrent_streams_on_the_numpy_engine_get_what_each_gets_alone(spq, events):
    """The default engine for a .spq: three sessions at once share forward passes (the batcher) and each gets the
    windows and firing rates it gets alone; one resets half-way and then gets what a new stream gets."""
    assert serving_model(Settings(model=spq)) == (spq, "numpy")
    span = 6 * 50_000
    parts = [events[(events["t"] >= t0) & (events["t"] < t0 + span)] for t0 in (1_000_000, 1_500_000, 2_000_000)]
    streams = [[parts[0], parts[1]], [parts[1]], [parts[2]]]  # stream 0 resets between its two parts
    with TestClient(create_app(Settings(model=spq, threads=1, max_batch=8))) as client:
        assert client.get("/v1/model").json()["runtime"] == "numpy"
        got: list[list[dict]] = [[] for _ in streams]
        with ExitStack() as stack:
            sockets = [stack.enter_context(client.websocket_connect("/v1/stream")) for _ in streams]
            for step in range(2):
                for ws, stream in zip(sockets, streams, strict=True):  # every session busy at once
                    if step < len(stream):
                        if step:
                            ws.send_json({"type": "reset"})
                        ws.send_bytes(encode_dat_records(stream[step]).tobytes())
                        ws.send_json({"type": "flush"})
                for ws, stream, out in zip(sockets, streams, got, strict=True):
                    if step < len(stream):
                        if step:
                            assert ws.receive_json() == {"type": "ack", "command": "reset"}
                        out.extend(_windows_until_flushed(ws))
        metrics = client.get("/metrics").text
    detector = StreamingDetector(NumpyRuntime.load(spq)).for_sensor(304, 240)
    for stream, messages in zip(streams, got, strict=True):
        expected = []
        for part in stream:  # a fresh state per part: the reset
            state = None
            for window in iter_windows([part], detector.window_us):
                meter = SpikeMeter()
                ((boxes, state),) = step_batch([WindowJob(detector, window.events, window.t_start, state)], meter)
                expected.append({"type": "detections", **window_json(window.t_start, window.t_end, boxes,
                                                                      ["car", "pedestrian"]),
                                 "firing_rate": round(meter.rates()[0], 6)})
        assert [m.pop("firing_rate") for m in messages] == [m.pop("firing_rate") for m in expected]
        assert_same_windows(messages, expected)
    assert sum(len(m["detections"]) for out in got for m in out) > 0
    batches = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
               if line.startswith("spquant_batch_windows_")}
    assert batches["spquant_batch_windows_sum"] == sum(len(out) for out in got)  # every window through the batcher


def test_an_inference_process_gives_what_the_server_process_gives(spq, events, tmp_path):
    """Windows sent to an inference process (as plain data: sensor, thresholds, events and their stream's key) come
    back with the boxes and firing rates that run_isolated gives in-process, the process carrying each stream's state
    from one window to the next (a released key starts afresh, never shipping a state); a job that cannot run fails
    alone, and a model that does not load fails the start."""
    engine = NumpyRuntime.load(spq)
    detectors = [StreamingDetector(engine, conf_thres=c).for_sensor(304, 240) for c in (0.25, 0.05)]
    windows = list(iter_windows([events], detectors[0].window_us))[28:31]
    first = run_isolated([WindowJob(detectors[0], windows[0].events, windows[0].t_start)])[0]
    expected = [first, *run_isolated([WindowJob(detectors[0], windows[1].events, windows[1].t_start, first[1]),
                                      WindowJob(detectors[1], windows[2].events, windows[2].t_start)])]
    a, b, c = (RemoteState(0, key) for key in (7, 8, 9))
    process = InferenceProcess(spq, True, "numpy")
    try:
        process.wait_ready()
        got = process.run([WindowJob(detectors[0], windows[0].events, windows[0].t_start, a),
                           WindowJob(detectors[1], windows[2].events, windows[2].t_start, b),
                           WindowJob(detectors[1], windows[2].events, windows[0].t_start, c)])  # events off the window
        process.release(b.key)
        got += process.run([WindowJob(detectors[0], windows[1].events, windows[1].t_start, a),
                            WindowJob(detectors[1], windows[2].events, windows[2].t_start, b)])
    finally:
        process.close()
    assert isinstance(got.pop(2), EventValidationError)
    for (boxes, state, rate), (ref_boxes, _, ref_rate) in zip(got, [expected[0], expected[2], *expected[1:]],
                                                               strict=True):
        assert isinstance(state, RemoteState) and rate == ref_rate
        assert len(boxes) == len(ref_boxes) and np.allclose(boxes["x"], ref_boxes["x"], atol=1e-3)
    assert [state for _, state, _ in got] == [a, b, a, b]
    broken = InferenceProcess(tmp_path / "missing.spq", True, "numpy")
    try:
        with pytest.raises(FileNotFoundError):
            broken.wait_ready()
    finally:
        broken.close()


def test_a_stream_stays_in_the_inference_process_that_holds_its_state(spq, events):
    """With inference processes a session holds a key, not a state: a new stream goes to the process with the fewest
    streams and stays there; a released stream frees its place, and its key starts afresh nowhere (keys are never
    reused); every window gives the boxes and firing rate of the stream run alone in-process."""
    windows = list(iter_windows([events], 50_000))[28:31]

    async def run() -> list[tuple[np.ndarray, object, float]]:
        engine = DetectionEngine(NumpyRuntime.load(spq), spq, 2, Metrics(), 8, (True, "numpy"))
        try:
            detector = engine.detector(304, 240, 0.25)
            firsts = await asyncio.gather(*(engine.step(detector, windows[0].events, windows[0].t_start, None)
                                            for _ in range(3)))
            assert [state.process for _, state, _ in firsts] == [0, 1, 0]
            second = await engine.step(detector, windows[1].events, windows[1].t_start, firsts[0][1])
            engine.release(firsts[1][1])
            fresh = await engine.step(detector, windows[0].events, windows[0].t_start, None)
            assert fresh[1].process == 1 and fresh[1].key not in {state.key for _, state, _ in firsts}
            return [*firsts, second, fresh]
        finally:
            engine.close()

    got = asyncio.run(run())
    assert got[3][1] == got[0][1]  # the stream kept its place
    detector = StreamingDetector(NumpyRuntime.load(spq)).for_sensor(304, 240)
    first = run_isolated([WindowJob(detector, windows[0].events, windows[0].t_start)])[0]
    second = run_isolated([WindowJob(detector, windows[1].events, windows[1].t_start, first[1])])[0]
    for (boxes, _, rate), (ref_boxes, _, ref_rate) in zip(got, [first] * 3 + [second, first], strict=True):
        assert rate == ref_rate and len(boxes) == len(ref_boxes)
        assert np.allclose(boxes["x"], ref_boxes["x"], atol=1e-3)
