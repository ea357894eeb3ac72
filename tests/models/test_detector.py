import numpy as np
import pytest
import torch

from data.formats.labels import make_boxes
from models.networks.checkpoint import CheckpointError, load_detector, read_checkpoint, save_checkpoint
from models.networks.detector import DetectorConfig, build_detector, requantized
from models.networks.loss import DetectionLoss, select_images
from models.networks.state import detach_state, reset_state, state_nbytes
from models.networks.ultralytics_parts import Detect
from tests.helpers import TINY, calibrated


def _input(seed=0, batch=1, cfg=None):
    cfg = cfg or DetectorConfig(**TINY)
    h, w = cfg.padded_size
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (cfg.bins, batch, 2, h, w), generator=g, dtype=torch.uint8)


def _calibrated(cfg=None):
    """A fresh detector whose BN statistics come from a few windows, so deep layers fire in eval mode."""
    return calibrated(build_detector(cfg or DetectorConfig(**TINY)), (_input(seed, batch=2) for seed in range(3)))


@pytest.mark.parametrize("scale", ["n", "s", "m"])
@pytest.mark.parametrize("variant", ["spquant", "baseline"])
def test_forward_shapes_every_scale(scale, variant):
    cfg = DetectorConfig(variant=variant, scale=scale, **TINY)
    model = build_detector(cfg).eval()
    with torch.no_grad():
        y, state = model(_input(batch=2, cfg=cfg))
    anchors = sum((64 // s) * (96 // s) for s in (8, 16, 32))
    assert y.shape == (2, 4 + 2, anchors)
    assert state_nbytes(state) > 0
    model.train()
    out, _ = model(_input(batch=2, cfg=cfg))
    assert out["boxes"].shape == (2, 4 * 16, anchors) and out["scores"].shape == (2, 2, anchors)


def test_state_carried_differs_from_reset_and_is_deterministic():
    model = _calibrated()
    first, second = _input(0), _input(1)
    with torch.no_grad():
        _, state = model(first)
        carried, _ = model(second, state)
        carried_again, _ = model(second, model(first)[1])
        fresh, _ = model(second)
    assert torch.equal(carried, carried_again)
    assert not torch.equal(carried, fresh)


def test_per_sample_reset_matches_fresh_state():
    model = _calibrated()
    with torch.no_grad():
        _, state = model(_input(0, batch=2))
        state = reset_state(state, torch.tensor([True, False]))
        y, _ = model(_input(1, batch=2), state)
        fresh, _ = model(_input(1, batch=2)[:, :1])
    assert torch.allclose(y[:1], fresh, rtol=1e-5, atol=1e-4)  # a batch of 2 rounds float32 sums differently


def test_two_streams_never_share_state():
    model = _calibrated()
    with torch.no_grad():
        _, state_a = model(_input(0))
        _, state_b = model(_input(5))
        out_a, _ = model(_input(1), state_a)
        _, _ = model(_input(7), state_b)  # advancing stream b must not affect stream a
        out_a_again, _ = model(_input(1), state_a)
    assert torch.equal(out_a, out_a_again)


def test_bad_input_shapes():
    model = build_detector(DetectorConfig(**TINY))
    with pytest.raises(ValueError, match=r"\[T, B, 2, H, W\]"):
        model(torch.zeros(2, 1, 3, 64, 96))
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.zeros(2, 1, 2, 60, 96))


@pytest.mark.parametrize("kwargs", [{"variant": "fp16"}, {"scale": "xl"}, {"bins": 0}, {"class_names": ()},
                                    {"head_act_bits": 8}, {"head_bits": 4, "head_act_bits": 9},
                                    {"weight_quantizer": "lsq"}, {"variant": "baseline", "head_bits": 4}])
def test_bad_detector_config(kwargs):
    with pytest.raises(ValueError):
        DetectorConfig(**kwargs)


def test_requantized_keeps_the_weights_and_changes_only_quantization():
    torch.manual_seed(0)
    model = build_detector(DetectorConfig(input_width=64, input_height=64, bins=2)).eval()
    assert requantized(model) is model
    integer = requantized(model, weight_bits=2, head_bits=4, head_act_bits=8, weight_quantizer="sawb")
    assert (integer.config.weight_bits, integer.config.head_bits, integer.config.head_act_bits) == (2, 4, 8)
    assert not integer.training
    source = model.state_dict()
    for key, value in integer.state_dict().items():
        if key.endswith(".act.scale"):
            assert value == 0  # calibrates on its first input
        else:
            assert torch.equal(value, source[key]), key
    out, _ = integer(torch.ones(2, 1, 2, 64, 64))
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="quantization fields only"):
        requantized(model, scale="s")


def test_loss_is_finite_with_and_without_targets():
    model = build_detector(DetectorConfig(**TINY)).train()
    preds, _ = model(_input(batch=2))
    loss_fn = DetectionLoss(model)
    targets = [make_boxes([0], [10], [10], [30], [20], [1]), make_boxes([], [], [], [], [], [])]
    total, parts = loss_fn(preds, targets)
    assert torch.isfinite(total) and parts.shape == (3,) and total > 0
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    preds, _ = model(_input(batch=2))
    total, _ = loss_fn(select_images(preds, torch.tensor([1])), targets[1:])
    assert torch.isfinite(total)
    with pytest.raises(ValueError, match="target arrays"):
        loss_fn(preds, targets[:1])


def test_truncated_bptt_detaches_state():
    model = build_detector(DetectorConfig(**TINY)).train()
    _, state = model(_input())
    detached = detach_state(state)
    leaves = []
    stack = [detached]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack += list(item.values())
        elif item is not None:
            leaves.append(item)
    assert leaves and not any(t.requires_grad for t in leaves)


def test_checkpoint_round_trip_and_errors(tmp_path):
    cfg = DetectorConfig(**TINY)
    model = build_detector(cfg).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, metrics={"AP": 0.5})
    loaded = load_detector(path)
    assert loaded.config == cfg
    x = _input()
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])
    assert read_checkpoint(path)["metrics"] == {"AP": 0.5}
    with pytest.raises(CheckpointError, match="differs"):
        load_detector(path, expected=DetectorConfig(variant="baseline", **TINY))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_detector(tmp_path / "junk.pt")
    payload = read_checkpoint(path)
    payload["version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="version 99"):
        load_detector(tmp_path / "future.pt")
    payload["version"] = 1
    payload["detector"]["scale"] = "s"
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="do not match"):
        load_detector(tmp_path / "mismatch.pt")
    with pytest.raises(FileNotFoundError):
        load_detector(tmp_path / "missing.pt")


def test_checkpoint_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"format": "spquant-checkpoint", "version": 1, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path / "evil.pt")


def test_streaming_detector_maps_boxes_back_to_the_sensor():
    from models.inference.stream import StreamingDetector

    model = build_detector(DetectorConfig(**TINY))
    detector = StreamingDetector(model, conf_thres=0.0, max_det=5).for_sensor(1280, 720)
    events = np.zeros(0, dtype=[("t", "<i8")])
    from data.events import make_events

    events = make_events([10, 20], [0, 1279], [0, 719], [0, 1])
    dets, state = detector.step(events, 0)
    assert len(dets) <= 5 and np.all(dets["t"] == 50_000)
    assert np.all(dets["x"] >= 0) and np.all(dets["x"] + dets["w"] <= 1280 + 1e-3)
    assert state is not None


def test_the_head_ignores_ultralytics_class_wide_legacy_flag(monkeypatch):
    config = DetectorConfig(**TINY)
    keys = set(build_detector(config).state_dict())
    monkeypatch.setattr(Detect, "legacy", True)  # what ultralytics' parse_model leaves after it builds a YOLOv8
    assert set(build_detector(config).state_dict()) == keys
    assert Detect.legacy is True  # the flag is put back as it was found
