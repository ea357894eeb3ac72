"""The sensor a model was trained for: recorded in its config, the default of REST, streams and `spquant predict`."""

import dataclasses

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app.cli import main
from data.formats.dat import encode_dat_records, write_dat
from data.formats.evt3 import encode_evt3
from data.formats.labels import read_labels
from data.formats.raw import write_raw
from data.formats.recording import open_recording
from models.inference.bundled import BUNDLED_MODEL
from models.inference.export import export_model
from models.inference.loading import load_model
from models.networks.checkpoint import load_detector, read_checkpoint, save_checkpoint
from models.networks.detector import DetectorConfig, build_detector
from service.main import create_app
from service.settings import Settings
from tests.helpers import random_events
from tests.service_support import TINY_HEIGHT as H
from tests.service_support import TINY_WIDTH as W
from tests.service_support import tiny_checkpoint

SAMPLE = BUNDLED_MODEL.parents[2] / "data" / "samples" / "street_td.dat"  # a 304x240 recording (Gen1 layout)
OCTET = {"content-type": "application/octet-stream"}


def _sample_records():
    recording = open_recording(SAMPLE)
    return recording.read(), SAMPLE.read_bytes()[recording.data_offset:]


def _boxes_by_window(windows):
    """REST / stream windows as {t_end: [(x, y, w, h, class_id, score), ...]} (only windows with boxes)."""
    return {w["t_end"]: [(d["x"], d["y"], d["w"], d["h"], d["class_id"], d["score"]) for d in w["detections"]]
            for w in windows if w["detections"]}


def _predict_by_window(path):
    dets = read_labels(path)
    out = {}
    for row in dets:
        out.setdefault(int(row["t"]), []).append((float(row["x"]), float(row["y"]), float(row["w"]), float(row["h"]),
                                                  int(row["class_id"]), float(row["class_confidence"])))
    return out


# ------------------------------------------------------------------------------------------------- the config


def test_detector_config_records_the_sensor_and_defaults_to_the_input_size():
    assert DetectorConfig(input_width=152, input_height=120).sensor_size == (152, 120)
    config = DetectorConfig(input_width=152, input_height=120, sensor_width=304, sensor_height=240)
    assert config.sensor_size == (304, 240)
    assert DetectorConfig.from_dict(config.to_dict()) == config
    for bad in ({"sensor_width": 304}, {"sensor_height": 240}, {"sensor_width": -1, "sensor_height": -1},
                {"sensor_width": 30.5, "sensor_height": 24}, {"sensor_width": True, "sensor_height": 1}):
        with pytest.raises(ValueError, match="sensor"):
            DetectorConfig(**bad)


def test_an_old_checkpoint_without_the_sensor_loads_with_the_input_size(tmp_path):
    path = tiny_checkpoint(tmp_path / "tiny.pt")
    payload = read_checkpoint(path)
    for key in ("sensor_width", "sensor_height"):
        del payload["detector"][key]  # as checkpoints were written before the fields existed
    torch.save(payload, tmp_path / "old.pt")
    model = load_detector(tmp_path / "old.pt")
    assert model.config.sensor_size == (W, H) and (model.config.sensor_width, model.config.sensor_height) == (0, 0)
    with TestClient(create_app(Settings(model=tmp_path / "old.pt", threads=1))) as c:
        info = c.get("/v1/model").json()
        assert (info["sensor_width"], info["sensor_height"]) == (W, H)
        ok = c.post("/v1/detect", content=encode_dat_records(random_events(50, width=W, height=H)).tobytes(),
                    headers=OCTET)
        assert ok.status_code == 200 and (ok.json()["width"], ok.json()["height"]) == (W, H)


def test_the_sensor_survives_checkpoint_and_export(tmp_path):
    config = DetectorConfig(bins=2, input_width=W, input_height=H, sensor_width=3 * W, sensor_height=3 * H)
    model = build_detector(config).eval()
    save_checkpoint(tmp_path / "m.pt", model)
    assert load_detector(tmp_path / "m.pt").config == config
    export_model(model, tmp_path / "m.spq")
    assert load_model(tmp_path / "m.spq").config.sensor_size == (3 * W, 3 * H)


def test_the_bundled_models_record_gen1s_sensor():
    for name in ("spquant-n", "baseline-n", "spquant-n-pruned", "spquant-n-pruned-4.7x"):
        config = read_checkpoint(BUNDLED_MODEL.with_name(f"{name}.pt"))["detector"]
        assert (config["sensor_width"], config["sensor_height"]) == (304, 240), name


# ------------------------------------------------------------------------ a model trained for a bigger sensor


@pytest.fixture(scope="module")
def big_sensor_model(tmp_path_factory):
    """The tiny model, recorded as trained for a 2x sensor (192x128)."""
    folder = tmp_path_factory.mktemp("model")
    path = tiny_checkpoint(folder / "tiny.pt")
    model = load_detector(path)
    model.config = dataclasses.replace(model.config, sensor_width=2 * W, sensor_height=2 * H)
    return save_checkpoint(folder / "big.pt", model)


@pytest.fixture(scope="module")
def big_client(big_sensor_model):
    with TestClient(create_app(Settings(model=big_sensor_model, score_threshold=0.0, threads=1))) as c:
        yield c


@pytest.fixture(scope="module")
def big_events():
    return random_events(1500, t_max=300_000, width=2 * W, height=2 * H, seed=5, t_min=10_000)


def test_requests_without_a_size_use_the_models_sensor(big_client, big_events):
    info = big_client.get("/v1/model").json()
    assert (info["sensor_width"], info["sensor_height"], info["input_width"]) == (2 * W, 2 * H, W)
    default = big_client.post("/v1/detect", content=encode_dat_records(big_events).tobytes(), headers=OCTET)
    assert default.status_code == 200, default.text
    explicit = big_client.post(f"/v1/detect?width={2 * W}&height={2 * H}",
                               content=encode_dat_records(big_events).tobytes(), headers=OCTET)
    assert default.json() == explicit.json() and (default.json()["width"], default.json()["height"]) == (2 * W, 2 * H)
    columns = big_client.post("/v1/detect", json={k: big_events[k].tolist() for k in "txyp"})
    assert columns.json() == default.json()
    off = big_events.copy()
    off["x"][-1] = 2 * W  # one column past the model's sensor
    refused = big_client.post("/v1/detect", content=encode_dat_records(off).tobytes(), headers=OCTET)
    assert refused.status_code == 422 and f"outside a sensor of {2 * W}x{2 * H}" in refused.json()["detail"]


def test_stream_without_width_height_uses_the_models_sensor(big_client, big_events):
    rest = big_client.post("/v1/detect", content=encode_dat_records(big_events).tobytes(), headers=OCTET).json()
    with big_client.websocket_connect("/v1/stream") as ws:
        ws.send_json({"type": "config", "encoding": "evt3"})
        ack = ws.receive_json()
        assert (ack["width"], ack["height"]) == (2 * W, 2 * H)
        ws.send_bytes(encode_evt3(big_events))
        ws.send_json({"type": "flush"})
        messages = []
        while (message := ws.receive_json())["type"] == "detections":
            message.pop("latency_ms"), message.pop("firing_rate")  # REST windows carry neither
            messages.append(message)
    assert [{"type": "detections", **w} for w in rest["windows"]] == messages


def test_uploads_without_a_stated_size_use_the_models_sensor_and_headers_win(big_client, big_events, tmp_path):
    bare = tmp_path / "bare_td.dat"
    bare.write_bytes(encode_dat_records(big_events).tobytes())  # a headerless DAT
    raw = tmp_path / "nogeometry.raw"
    write_raw(raw, big_events, encoding="evt2", width=2 * W, height=2 * H)
    data = raw.read_bytes()
    header_end = data.index(b"% end\n") + len(b"% end\n")
    raw.write_bytes(b"% evt 2.0\n% end\n" + data[header_end:])  # the same words, no geometry in the header
    answers = []
    for path in (bare, raw):
        with open(path, "rb") as f:
            response = big_client.post("/v1/detect", files={"file": (path.name, f, "application/octet-stream")})
        assert response.status_code == 200, response.text
        answers.append(response.json())
    assert (answers[0]["width"], answers[0]["height"]) == (2 * W, 2 * H)
    assert answers[0]["windows"] == answers[1]["windows"]
    stated = tmp_path / "stated_td.dat"
    small = random_events(300, t_max=100_000, width=W, height=H, seed=2)
    write_dat(stated, small, width=W, height=H)  # the header's geometry wins over the model's sensor
    with open(stated, "rb") as f:
        body = big_client.post("/v1/detect", files={"file": (stated.name, f, "application/octet-stream")}).json()
    assert (body["width"], body["height"]) == (W, H)


def test_predict_on_a_headerless_file_uses_the_models_sensor(big_sensor_model, big_client, big_events, tmp_path):
    bare = tmp_path / "bare_td.dat"
    bare.write_bytes(encode_dat_records(big_events).tobytes())
    assert main(["predict", str(bare), "--model", str(big_sensor_model), "--out", str(tmp_path / "d.npy"),
                 "--conf", "0"]) == 0
    with TestClient(create_app(Settings(model=big_sensor_model, score_threshold=0.0, integer=False, threads=1))) as c:
        rest = c.post("/v1/detect", content=encode_dat_records(big_events).tobytes(), headers=OCTET).json()
    got, want = _predict_by_window(tmp_path / "d.npy"), _boxes_by_window(rest["windows"])
    assert got.keys() == want.keys() and got
    for t in want:
        np.testing.assert_allclose(np.array(got[t]), np.array(want[t]), rtol=1e-6, atol=1e-4)


# ----------------------------------------------------------------------------- the bundled model, Gen1 data


@pytest.fixture(scope="module")
def bundled_client():
    # The checkpoint itself (integer=False): what `spquant predict` runs on the .pt
    with TestClient(create_app(Settings(score_threshold=0.25, integer=False, threads=1))) as c:
        yield c


def test_bundled_model_takes_a_gen1_recording_without_parameters(bundled_client, tmp_path):
    events, records = _sample_records()
    info = bundled_client.get("/v1/model").json()
    assert (info["sensor_width"], info["sensor_height"]) == (304, 240) and info["input_width"] == 152
    response = bundled_client.post("/v1/detect", content=records, headers=OCTET)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"], body["events"]) == (304, 240, len(events))
    assert main(["predict", str(SAMPLE), "--out", str(tmp_path / "d.npy")]) == 0
    got, want = _predict_by_window(tmp_path / "d.npy"), _boxes_by_window(body["windows"])
    assert got.keys() == want.keys() and got
    for t in want:
        np.testing.assert_allclose(np.array(got[t]), np.array(want[t]), rtol=1e-6, atol=1e-4)
    with bundled_client.websocket_connect("/v1/stream") as ws:  # no config at all: DAT from the 304x240 sensor
        for start in range(0, len(records), 1 << 16):
            ws.send_bytes(records[start:start + (1 << 16)])
        ws.send_json({"type": "flush"})
        messages = []
        while (message := ws.receive_json())["type"] == "detections":
            message.pop("latency_ms"), message.pop("firing_rate")  # REST windows carry neither
            messages.append(message)
    assert [{"type": "detections", **w} for w in body["windows"]] == messages
