"""REST side of the service: health, model info, /v1/detect in its three input forms, limits, bad input, docs."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from data.formats.dat import encode_dat_records, write_dat
from data.formats.evt3 import encode_evt3
from data.formats.raw import write_raw
from data.windows import iter_windows
from models.inference.loading import load_model
from models.inference.stream import StreamingDetector
from service.main import create_app
from service.schemas import window_json
from service.settings import Settings
from tests.helpers import random_events
from tests.service_support import TINY_HEIGHT as H
from tests.service_support import TINY_WIDTH as W
from tests.service_support import running_server, tiny_checkpoint

OCTET = {"content-type": "application/octet-stream"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")


def _settings(checkpoint, **overrides):
    return Settings(model=checkpoint, score_threshold=0.0, threads=1, **overrides)


@pytest.fixture(scope="module")
def client(checkpoint):
    with TestClient(create_app(_settings(checkpoint, max_request_bytes=1 << 20, max_events_per_request=50_000,
                                         max_windows=200))) as c:
        yield c


@pytest.fixture(scope="module")
def events():
    # 0.4 s with a silent gap of three windows, on the model's own 96x64 grid
    ev = random_events(1500, t_max=400_000, width=W, height=H, seed=1, t_min=12_000)
    return ev[(ev["t"] < 120_000) | (ev["t"] >= 270_000)]


def _reference(checkpoint, ev, width=W, height=H, conf=0.0):
    """What `spquant predict` computes: StreamingDetector.run over iter_windows, serialised like the service."""
    detector = StreamingDetector(load_model(checkpoint, integer=True), conf_thres=conf).for_sensor(width, height)
    return [window_json(w.t_start, w.t_end, boxes, ["car", "pedestrian"])
            for w, boxes in detector.run(iter_windows([ev], detector.window_us))]


def _records(ev):
    return encode_dat_records(ev).tobytes()


def test_health_and_model_info(client):
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    info = client.get("/v1/model").json()
    assert info["classes"] == ["car", "pedestrian"] and info["time_bins"] == 2 and info["window_us"] == 50_000
    assert (info["input_width"], info["input_height"]) == (W, H)
    assert info["membrane_levels"] == [-1.0, 0.0, 1.0] and info["weight_bits"] == 4
    assert info["params"] > 0 and 0 < info["weight_bytes"] < 4 * info["params"]
    assert info["state_bytes_per_stream"] > 0 and info["channels"] > 0
    assert info["runtime"] == "integer"  # a quantized checkpoint is served by the integer runtime by default


def test_the_fake_quant_model_is_served_when_integer_is_off(checkpoint, events):
    with TestClient(create_app(Settings(model=checkpoint, score_threshold=0.0, integer=False))) as c:
        assert c.get("/v1/model").json()["runtime"] == "pytorch"
        windows = c.post("/v1/detect", content=_records(events), headers=OCTET).json()["windows"]
    detector = StreamingDetector(load_model(checkpoint), conf_thres=0.0)
    assert windows == [window_json(w.t_start, w.t_end, boxes, ["car", "pedestrian"])
                       for w, boxes in detector.run(iter_windows([events], detector.window_us))]


def test_detect_records_matches_predict_path_with_aligned_and_empty_windows(client, checkpoint, events):
    response = client.post("/v1/detect", content=_records(events), headers=OCTET)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"], body["window_us"], body["events"]) == (W, H, 50_000, len(events))
    starts = [w["t_start"] for w in body["windows"]]
    assert starts == list(range(0, 400_000, 50_000))  # aligned to multiples of Δ, gap windows included
    assert body["windows"] == _reference(checkpoint, events)
    assert any(w["detections"] for w in body["windows"])
    det = body["windows"][0]["detections"][0]
    assert set(det) == {"x", "y", "w", "h", "class_id", "class_name", "score"}


def test_json_columns_give_the_same_answer(client, events):
    columns = {k: events[k].tolist() for k in "txyp"}
    as_json = client.post("/v1/detect", json=columns)
    as_records = client.post("/v1/detect", content=_records(events), headers=OCTET)
    assert as_json.status_code == 200, as_json.text
    assert as_json.json() == as_records.json()


@pytest.mark.parametrize("kind", ["dat", "evt2", "evt3"])
def test_uploaded_recording_uses_its_header_geometry(client, checkpoint, events, tmp_path, kind):
    # A 192x128 sensor: letterboxed into the 96x64 model, boxes mapped back to the recording's coordinates
    big = events.copy()
    big["x"], big["y"] = events["x"] * 2, events["y"] * 2
    path = tmp_path / ("rec_td.dat" if kind == "dat" else "rec.raw")
    if kind == "dat":
        write_dat(path, big, width=192, height=128)
    else:
        write_raw(path, big, encoding=kind, width=192, height=128)
    with open(path, "rb") as f:
        response = client.post("/v1/detect", files={"file": (path.name, f, "application/octet-stream")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"], body["events"]) == (192, 128, len(big))
    assert body["windows"] == _reference(checkpoint, big, 192, 128)
    boxes = [d for w in body["windows"] for d in w["detections"]]
    assert boxes and all(d["x"] + d["w"] <= 192 + 1e-3 and d["y"] + d["h"] <= 128 + 1e-3 for d in boxes)


def test_sensor_size_parameters_and_score_threshold(client, checkpoint, events):
    big = events.copy()
    big["x"] = events["x"] * 3
    off_sensor = client.post("/v1/detect", content=_records(big), headers=OCTET)
    assert off_sensor.status_code == 422 and "outside a sensor of 96x64" in off_sensor.json()["detail"]
    sized = client.post("/v1/detect?width=288&height=64", content=_records(big), headers=OCTET)
    assert sized.status_code == 200 and sized.json()["windows"] == _reference(checkpoint, big, 288, 64)
    strict = client.post("/v1/detect?score_threshold=0.5", content=_records(events), headers=OCTET).json()
    assert strict["windows"] == _reference(checkpoint, events, conf=0.5)
    assert all(d["score"] >= 0.5 for w in strict["windows"] for d in w["detections"])
    half = client.post("/v1/detect?width=96", content=_records(events), headers=OCTET)
    assert half.status_code == 422 and "both width and height" in half.json()["detail"]


def test_empty_body_gives_no_windows(client):
    response = client.post("/v1/detect", content=b"", headers=OCTET)
    assert response.status_code == 200 and response.json()["windows"] == []


@pytest.mark.parametrize(
    ("content", "headers", "status", "needle"),
    [
        (b"\x00" * 13, OCTET, 400, "not a whole number of 8-byte DAT records"),
        (b"{not json", {"content-type": "application/json"}, 400, "not valid JSON"),
        (b'{"t": [1], "x": [1], "y": [1]}', {"content-type": "application/json"}, 422, "Field required"),
        (b'{"t": [1, 2], "x": [1], "y": [1], "p": [1]}', {"content-type": "application/json"}, 422,
         "equally long"),
        (b'{"t": [-5], "x": [1], "y": [1], "p": [1]}', {"content-type": "application/json"}, 422, "greater than"),
        (b'{"t": [1], "x": [1], "y": [1], "p": [2]}', {"content-type": "application/json"}, 422, "less than"),
        (b'{"t": [1.5], "x": [1], "y": [1], "p": [1]}', {"content-type": "application/json"}, 422, "integer"),
        (b'{"t": [9, 3], "x": [1, 1], "y": [1, 1], "p": [1, 1]}', {"content-type": "application/json"}, 422,
         "must not decrease"),
        (b'{"t": [0, 9000000000], "x": [1, 1], "y": [1, 1], "p": [1, 1]}', {"content-type": "application/json"},
         422, "timestamp jump"),
        (b"hello", {"content-type": "text/plain"}, 415, "not accepted"),
        (b"hello", {}, 415, "not accepted"),
    ],
)
def test_bad_payloads_get_a_4xx_with_a_clear_message(client, content, headers, status, needle):
    response = client.post("/v1/detect", content=content, headers=headers)
    assert response.status_code == status, response.text
    assert needle in json.dumps(response.json()["detail"])


def test_bad_uploads(client, tmp_path):
    no_file = client.post("/v1/detect", data={"other": "x"}, files={"x": ("a.txt", b"abc", "text/plain")})
    assert no_file.status_code == 400 and "file field 'file'" in no_file.json()["detail"]
    garbage = client.post("/v1/detect", files={"file": ("a.raw", b"hello world, not events", "text/plain")})
    assert garbage.status_code == 422 and "not a Prophesee" in garbage.json()["detail"]
    truncated = _records(random_events(10, width=W, height=H))[:-3]
    cut = client.post("/v1/detect", files={"file": ("cut.dat", truncated, "application/octet-stream")})
    assert cut.status_code == 422 and "truncated" in cut.json()["detail"]
    path = tmp_path / "headerless.raw"
    path.write_bytes(b"% evt 3.0\n% end\n" + encode_evt3(random_events(5, width=2 * W, height=H, seed=1)))
    with open(path, "rb") as f:  # RAW without geometry: the model's sensor (96x64 here), which these events leave
        no_size = client.post("/v1/detect", files={"file": (path.name, f, "application/octet-stream")})
    assert no_size.status_code == 422 and f"outside a sensor of {W}x{H}" in no_size.json()["detail"]


def test_limits(client):
    too_big = client.post("/v1/detect", content=b"\x00" * ((1 << 20) + 8), headers=OCTET)
    assert too_big.status_code == 413 and "limit" in too_big.json()["detail"]

    def chunked():  # no Content-Length: the limit applies while reading
        for _ in range(300):
            yield b"\x00" * 8192

    streamed = client.post("/v1/detect", content=chunked(), headers=OCTET)
    assert streamed.status_code == 413, streamed.text
    many = random_events(50_001, t_max=1_000_000, width=W, height=H)
    too_many = client.post("/v1/detect", content=_records(many), headers=OCTET)
    assert too_many.status_code == 413 and "50000" in too_many.json()["detail"]
    as_file = client.post("/v1/detect", files={"file": ("many.dat", _records(many), "application/octet-stream")})
    assert as_file.status_code == 413, as_file.text
    assert client.get("/healthz").status_code == 200  # still serving


def test_api_key_guards_every_route_but_health(checkpoint):
    with TestClient(create_app(_settings(checkpoint, api_key="s3cret"))) as c:
        assert c.get("/healthz").status_code == 200
        for method, path in (("get", "/v1/model"), ("get", "/metrics"), ("post", "/v1/detect")):
            assert getattr(c, method)(path).status_code == 401
            assert getattr(c, method)(path, headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/v1/model", headers={"X-API-Key": "s3cret"}).status_code == 200
        ok = c.post("/v1/detect", content=b"", headers={**OCTET, "X-API-Key": "s3cret"})
        assert ok.status_code == 200


def test_openapi_documents_the_three_input_forms_with_examples(client):
    spec = client.get("/openapi.json").json()
    detect = spec["paths"]["/v1/detect"]["post"]
    content = detect["requestBody"]["content"]
    assert set(content) == {"application/octet-stream", "application/json", "multipart/form-data"}
    assert content["application/json"]["examples"]
    assert {"200", "400", "413", "415", "422"} <= set(detect["responses"])
    assert {p["name"] for p in detect["parameters"]} == {"width", "height", "score_threshold"}
    assert spec["components"]["schemas"]["DetectResponse"]["examples"]
    assert "/v1/model" in spec["paths"] and "/healthz" in spec["paths"]


def test_metrics_count_requests_and_windows(client, events):
    client.post("/v1/detect", content=_records(events), headers=OCTET)
    text = client.get("/metrics").text
    assert 'spquant_http_requests_total{method="POST",route="/v1/detect",status="200"}' in text
    assert 'spquant_windows_total{source="rest"}' in text and "spquant_active_sessions 0.0" in text


def test_missing_model_fails_at_startup(tmp_path):
    with pytest.raises(FileNotFoundError), TestClient(create_app(Settings(model=tmp_path / "none.pt"))):
        pass


def test_detections_are_deterministic_across_requests(client, events):
    first = client.post("/v1/detect", content=_records(events), headers=OCTET).json()
    second = client.post("/v1/detect", content=_records(events), headers=OCTET).json()
    assert first == second  # stateless: no state leaks from one request into the next
    assert np.isfinite([d["score"] for w in first["windows"] for d in w["detections"]]).all()


@pytest.mark.slow
def test_schema_driven_fuzz_finds_no_server_errors(checkpoint, tmp_path):
    pytest.importorskip("schemathesis", reason="schemathesis is not installed (pip install schemathesis)")
    with running_server(_settings(checkpoint, max_events_per_request=20_000)) as url:
        result = subprocess.run(
            [str(Path(sys.executable).parent / "schemathesis"), "run", f"{url}/openapi.json",
             "--checks", "not_a_server_error", "--max-examples", "100", "--workers", "1"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,  # it writes a .schemathesis/ cache
        )
    assert result.returncode == 0, result.stdout[-4000:]
