"""The integer Detect head (``head_act_bits`` > 0): export, both runtimes, exactness against the fake-quant model.

The model is the bundled one requantized to a 4-bit (or ternary) head with 8-bit activations, its activation
quantizers calibrated on windows of the bundled recording. Checks: the file's description and tensors; the torch
runtime (kernels and reference backends) and the numpy engine give the same states, head outputs and boxes bit for
bit; every hidden activation code equals the float64 evaluation of the fake-quant head (the standard of the
backbone's tests: the fake-quant arithmetic without float32 rounding), and its outputs agree to float32 rounding;
the accumulator bound covers the head; an uncalibrated head is refused; the unfused head still trains and runs.
"""

import copy

import numpy as np
import pytest
import torch

from data.formats.labels import make_boxes
from data.formats.recording import open_recording
from data.windows import iter_windows
from models.compress.accounting import footprint
from models.inference import export as export_module
from models.inference import fused_head
from models.inference.bundled import default_model_path
from models.inference.export import export_model, fold
from models.inference.numpy_detect import integer_branches
from models.inference.numpy_detect import non_max_suppression as numpy_nms
from models.inference.numpy_runtime import NumpyRuntime
from models.inference.runtime import Runtime
from models.inference.spq import ExportFormatError, read_spq
from models.inference.stream import StreamingDetector
from models.networks.checkpoint import load_detector
from models.networks.detector import DetectorConfig, SpikingYOLO, build_detector, requantized
from models.networks.loss import DetectionLoss
from models.networks.quant import QuantConfig, QuantConv2d, QuantSiLU, weight_codes
from models.networks.ultralytics_parts import non_max_suppression as ultralytics_nms
from tests.helpers import SAMPLE, TINY

ACT_BITS = 8


def _windows() -> tuple[StreamingDetector, list]:
    recording = open_recording(SAMPLE)
    detector = StreamingDetector(load_detector(default_model_path())).for_sensor(recording.width, recording.height)
    return detector, list(iter_windows(recording, detector.window_us))


def _counts(detector: StreamingDetector, windows: list) -> list[np.ndarray]:
    return [detector.counts(w.events, w.t_start) for w in windows]  # [T, 2, H, W] uint8 each


def integer_head_model(head_bits: int) -> SpikingYOLO:
    """The bundled model with an integer head, its activation quantizers calibrated (in train mode, as in training)
    on six windows of the bundled recording; the rest of the model stays as trained (BN statistics included)."""
    model = requantized(load_detector(default_model_path()), head_bits=head_bits, head_act_bits=ACT_BITS).eval()
    detector, windows = _windows()
    for module in model.modules():
        if isinstance(module, QuantSiLU):
            module.train()
    state = None
    with torch.no_grad():
        for counts in _counts(detector, windows[20:26]):
            _, state = model(torch.from_numpy(counts).unsqueeze(1), state)
    return model.eval()


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """``{head_bits: (model, exported path)}`` for a 4-bit and a ternary head, built once."""
    out = {}
    for bits in (4, 2):
        model = integer_head_model(bits)
        out[bits] = model, export_model(model, tmp_path_factory.mktemp("spq") / f"head{bits}.spq")
    return out


@pytest.fixture(params=[4, 2], ids=["4-bit", "ternary"])
def exported(request, heads):
    return heads[request.param]


def test_the_file_holds_integer_layers(exported):
    model, path = exported
    meta, tensors = read_spq(path)
    (detect,) = [node for node in meta["graph"] if node["kind"] == "detect"]
    described = detect["attrs"]["head_weights"]
    bits = model.config.head_bits
    hidden = [name.removesuffix(".act") for name, m in model.head.named_modules() if isinstance(m, QuantSiLU)]
    branches = [branch for level in range(3) for branch in integer_branches(level)]
    firsts, finals = {hidden[0] for hidden, _ in branches}, [final for _, final in branches]  # firsts read counts
    assert len(hidden) == 18
    assert set(described) == {f"{n}.conv.weight" for n in hidden} | {f"{n}.weight" for n in finals}
    for name in hidden:
        spec = described[f"{name}.conv.weight"]
        weight = model.head.get_submodule(name).conv.weight
        assert spec == {"shape": list(weight.shape), "bits": bits, "act_bits": ACT_BITS,
                        **({"input_steps": model.config.bins} if name in firsts else {})}, name
        assert tensors[f"head.{name}.conv.weight"].size == -(-weight.numel() * bits // 8)  # packed codes
        for key in ("multiplier", "shift", "bias"):
            assert tensors[f"head.{name}.{key}"].dtype == np.int64 and tensors[f"head.{name}.{key}"].shape == (
                weight.shape[0],)
        lut = tensors[f"head.{name}.lut"]
        assert lut.dtype == np.int8 and lut.shape == (2**ACT_BITS - 1,) and np.all(np.diff(lut[127:]) >= 0)
    for name in finals:
        conv = model.head.get_submodule(name)
        assert described[f"{name}.weight"] == {"shape": list(conv.weight.shape), "bits": bits}
        assert tensors[f"head.{name}.scale"].dtype == tensors[f"head.{name}.bias"].dtype == np.float32
    assert not [k for k in tensors if k.startswith("head.") and (".bn." in k or k.startswith("head.dfl"))]


def test_the_runtime_counts_the_heads_convs_and_weights(exported):
    """The accounting's figures: the head's convs (no DFL conv: its expectation is a reduction) and their codes and
    final biases; the maps and tables are constants, as the backbone's."""
    model, path = exported
    sizes, trained = footprint(Runtime.load(path)), footprint(model)
    convs = [m for m in model.head.modules() if isinstance(m, QuantConv2d)]
    codes = sum(node.module.conv.weight.numel() for node in model.graph.of_kind("conv"))
    biases = sum(c.bias.numel() for c in convs if c.bias is not None)  # the two final convs' per level
    assert sizes["conv_layers"] == trained["conv_layers"] - 1 == len(model.graph.of_kind("conv")) + len(convs)
    assert sizes["params"] == codes + sum(c.weight.numel() for c in convs) + biases


def test_runtimes_agree_bit_for_bit(exported):
    """Torch kernels, torch reference and numpy: the same states, head outputs and boxes, for a batch of two streams
    (one carried from earlier windows, one fresh)."""
    _, path = exported
    kernels, reference, engine = Runtime.load(path), Runtime.load(path, backend="reference"), NumpyRuntime.load(path)
    detector, windows = _windows()
    counts = _counts(detector, windows[26:32])
    with torch.inference_mode():
        _, carried = kernels(torch.from_numpy(counts[0]).unsqueeze(1))
    fresh = kernels.init_state()
    states = [{k: torch.cat([carried[k], fresh[k]]) for k in carried}] * 2
    state_n = {k: v.numpy() for k, v in states[0].items()}
    detections = 0
    for a, b in zip(counts[1:], counts[:-1], strict=True):
        x = np.stack([a, b], axis=1)  # [T, 2, 2, H, W]
        with torch.inference_mode():
            (y_k, state_k), (y_r, state_r) = (runtime(torch.from_numpy(x), state)
                                              for runtime, state in zip((kernels, reference), states, strict=True))
        y_n, state_n = engine(x, state_n)
        states = [state_k, state_r]
        assert torch.equal(y_k, y_r) and np.array_equal(y_k.numpy(), y_n)
        for name in state_k:
            assert torch.equal(state_k[name], state_r[name]) and np.array_equal(state_k[name].numpy(), state_n[name])
        # a low threshold: the ternary head, requantized without fine-tuning, scores low
        boxes = ultralytics_nms(y_k, conf_thres=0.01, iou_thres=0.6, max_det=100, nc=y_k.shape[1] - 4)
        for ours, theirs in zip(numpy_nms(y_n, conf_thres=0.01, iou_thres=0.6, max_det=100), boxes, strict=True):
            assert np.array_equal(ours, theirs.numpy())
            detections += len(ours)
    assert detections > 0


def float64_head(model: SpikingYOLO) -> torch.nn.Module:
    """The fake-quant head in float64: its weights the exported ``codes × scale`` (the float32 scales the float32
    forward multiplies; re-deriving them in float64 would be another quantizer), BN, SiLU and the activation
    quantizers (their float32 scales) in float64."""
    head = copy.deepcopy(model.head).double()
    for name, conv in model.head.named_modules():
        if isinstance(conv, QuantConv2d):
            codes, scale = weight_codes(conv.weight, conv.quant)
            twin = head.get_submodule(name)
            twin.weight.data = codes.double() * scale.double().view(-1, 1, 1, 1)
            twin.quant = QuantConfig(weight_bits=32)
    return head


def test_head_codes_equal_the_float64_fake_quant_evaluation(exported):
    """Every hidden activation code of the integer head equals the float64 fake-quant head's on the same firing
    rates; a code may differ only where the float64 pre-activation sits on a rounding boundary (a tie, to 1e-6 of a
    step: the fixed-point multipliers round at 2^-31). Head outputs agree to float32 rounding."""
    model, path = exported
    runtime = Runtime.load(path, backend="reference")
    head = float64_head(model)
    reference: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # layer → (pre-activation / scale, codes)
    integer: dict[str, torch.Tensor] = {}
    rates: dict[str, torch.Tensor] = {}

    def record(into: dict, name: str, value: torch.Tensor) -> None:
        into[name] = value

    acts = {name.removesuffix(".act"): m for name, m in head.named_modules() if isinstance(m, QuantSiLU)}
    for name, act in acts.items():
        act.register_forward_hook(lambda m, i, o, name=name: record(
            reference, name, (i[0] / m.scale.double(), torch.round(o / m.scale.double()))))
    for k, level in enumerate(runtime.head.levels):  # the reference backend's layers, named as the model's
        layers = {**{f"cv2.{k}.{i}": m for i, m in enumerate(level.box)},
                  **{f"cv3.{k}.{i // 2}.{i % 2}": m for i, m in enumerate(level.cls)}}
        for name, layer in layers.items():
            layer.register_forward_hook(lambda m, i, o, name=name: record(integer, name, o))
    detector, windows = _windows()
    state, codes, ties = None, 0, 0
    for counts in _counts(detector, windows[26:34]):
        with torch.inference_mode():
            y, state = runtime(torch.from_numpy(counts).unsqueeze(1), state,
                               observe=lambda node, v: record(rates, node.name, v) if node.kind == "rate" else None)
        steps = model.config.bins
        with torch.no_grad():  # the rates as float64 spike counts / T
            y64, _ = head([torch.round(rates[f"neck.rate.{i}"] * steps).double() / steps for i in range(3)])
        assert set(integer) == set(reference) and len(reference) == 18
        for name, (z, expected) in reference.items():
            differ = integer[name].double() != expected
            offset = (z + 0.5)[differ]
            assert torch.all((offset - offset.round()).abs() < 1e-6), name  # only ties may round either way
            codes += expected.numel()
            ties += int(differ.sum())
        assert torch.allclose(y[:, :4].double(), y64[:, :4], rtol=0, atol=1e-3)  # boxes, pixels
        assert torch.allclose(y[:, 4:].double(), y64[:, 4:], rtol=0, atol=1e-6)  # scores
    assert codes > 500_000 and ties <= codes * 1e-5


def test_the_unmerged_layouts_give_the_same_outputs(heads, monkeypatch):
    """The depthwise merge is a layout choice of the torch runtime: without it (wide inputs) it gives the same outputs,
    and those of the numpy engine (which never merges)."""
    _, path = heads[4]
    detector, windows = _windows()
    x = np.stack(_counts(detector, windows[30:32]), axis=1)
    with torch.inference_mode():
        expected, _ = Runtime.load(path)(torch.from_numpy(x))
    monkeypatch.setattr(fused_head, "MERGE_CHANNELS", 0)
    kernels, engine = Runtime.load(path), NumpyRuntime.load(path)
    assert not kernels.fused_head.levels[0].merged
    with torch.inference_mode():
        assert torch.equal(kernels(torch.from_numpy(x))[0], expected)
    assert np.array_equal(engine(x)[0], expected.numpy())


def test_the_onnx_step_runs_the_integer_head(heads, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from models.inference.onnx_step import OnnxStepModel, export_onnx

    _, path = heads[4]
    runtime = Runtime.load(path, backend="reference")
    onnx_model = OnnxStepModel(export_onnx(runtime, tmp_path / "m.onnx"))
    detector, windows = _windows()
    x = torch.from_numpy(_counts(detector, windows[30:31])[0]).unsqueeze(1)
    with torch.inference_mode():
        y, state = runtime(x)
    y_onnx, state_onnx = onnx_model(x)
    assert all(torch.equal(state[k], state_onnx[k]) for k in state)
    assert torch.allclose(y, y_onnx, rtol=0, atol=1e-5)  # ONNX Runtime's own float64 softmax and sigmoid


def test_the_accumulator_bound_covers_the_head(heads, monkeypatch):
    model, _ = heads[4]
    # below the head's bounds (8-bit codes in, up to 64·9 weights) but above every backbone conv's
    monkeypatch.setattr(export_module, "_FLOAT_EXACT", 2**16)
    with pytest.raises(ExportFormatError, match=r"head\.cv\d\.\d[.\d]*: accumulator bound \d+ exceeds 2\^24"):
        fold(model)


def test_an_uncalibrated_head_is_refused():
    model = requantized(load_detector(default_model_path()), head_bits=4, head_act_bits=ACT_BITS).eval()
    with pytest.raises(ExportFormatError, match=r"head\.cv2\.0\.0: the activation quantizer is not calibrated"):
        fold(model)


def test_the_unfused_head_trains_and_runs_in_eval():
    torch.manual_seed(0)
    model = build_detector(DetectorConfig(**TINY, head_bits=4, head_act_bits=ACT_BITS)).train()
    h, w = model.config.padded_size
    x = torch.randint(0, 3, (model.config.bins, 2, 2, h, w), dtype=torch.uint8)
    preds, _ = model(x)
    total, _ = DetectionLoss(model)(preds, [make_boxes([0], [10], [10], [30], [20], [1])] * 2)
    total.backward()
    conv = model.head.cv2[0][1].conv
    assert torch.isfinite(total) and conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert all(m.scale > 0 for m in model.head.modules() if isinstance(m, QuantSiLU))
    with torch.no_grad():
        y, _ = model.eval()(x)
    assert y.shape[:2] == (2, 4 + len(model.config.class_names)) and torch.isfinite(y).all()
