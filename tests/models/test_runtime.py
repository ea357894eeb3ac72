"""The integer runtime: same detections as the fake-quant model, exact fake-quant arithmetic, state, threads, memory.

Equivalence is checked two ways. Against the float32 fake-quant model (what training and eval run) on the bundled
recording: identical states, the same boxes and classes, the same scores. Against the same model with its spiking
layers in float64 — the fake-quant arithmetic without float32 rounding — on a synthetic recording: every membrane
state of every layer and window is identical, and so are the detections. (float32 itself rounds a handful of
membranes across a level boundary per few hundred windows; the integer runtime does not; see the README for the
measured numbers.) The runtime's fused Detect head (:mod:`models.inference.fused_head`) sums in another float32
order than the Detect head, so head outputs (boxes, scores) agree to float32 rounding; on the ``reference`` backend
(PyTorch integer ops and the Detect head itself) they are bit-identical.
"""

import dataclasses
import threading

import numpy as np
import pytest
import torch

from app.cli import main
from data.formats.recording import open_recording
from data.windows import iter_windows
from models.compress.accounting import footprint
from models.inference.bundled import default_model_path
from models.inference.export import export_model
from models.inference.runtime import IntConv, Runtime
from models.inference.spq import ExportFormatError
from models.inference.stream import StreamingDetector
from models.networks.checkpoint import load_detector
from models.networks.detector import DetectorConfig, SpikingYOLO, build_detector
from models.networks.neuron import IntegerLIF
from models.networks.state import state_nbytes
from tests.conftest import REPO
from tests.helpers import calibrated

SAMPLE = REPO / "data" / "samples" / "street_td.dat"
FIELDS = ("t", "x", "y", "w", "h", "class_id")
TINY = {"bins": 3, "input_width": 96, "input_height": 64}


@pytest.fixture(scope="module")
def trained():
    return load_detector(default_model_path())


@pytest.fixture(scope="module")
def runtime(trained, tmp_path_factory):
    return Runtime.load(export_model(trained, tmp_path_factory.mktemp("spq") / "m.spq"))


@pytest.fixture(scope="module")
def synthetic_recording(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    assert main(["synth", str(root), "--recordings", "1", "--duration", "2", "--seed", "11", "--splits", "test",
                 "--quiet"]) == 0
    return next((root / "test").glob("*_td.dat"))


def float64_reference(model: SpikingYOLO) -> SpikingYOLO:
    """The fake-quant model with backbone and neck in float64 (head unchanged: it reads float32 rates); the input
    counts are cast to the first layer's dtype."""
    model.backbone.double()
    model.neck.double()
    return model


def assert_same_state(levels: dict, codes: dict[str, torch.Tensor], step: float = 1.0) -> None:
    """The trained model's membranes (levels, θ units) equal the runtime's int8 codes × step, layer by layer: both
    states are keyed by the same LIF node names of the one layer graph."""
    assert set(levels) == set(codes)
    for name, value in codes.items():
        assert torch.equal(levels[name].double(), value.double() * step), name


def stream_both(reference, runtime, path, conf_thres=0.25):
    """Yield (reference boxes, runtime boxes, reference state, runtime state) for every window of ``path``."""
    recording = open_recording(path)
    a = StreamingDetector(reference, conf_thres=conf_thres).for_sensor(recording.width, recording.height)
    b = StreamingDetector(runtime, conf_thres=conf_thres).for_sensor(recording.width, recording.height)
    state_a = state_b = None
    for window in iter_windows(recording, a.window_us):
        boxes_a, state_a = a.step(window.events, window.t_start, state_a)
        boxes_b, state_b = b.step(window.events, window.t_start, state_b)
        yield boxes_a, boxes_b, state_a, state_b


def assert_same_boxes(a, b, score_tol=1e-6, box_tol=1e-3):
    """Same boxes: identical times and classes; coordinates (pixels) and scores to float32 rounding of the head."""
    assert len(a) == len(b)
    for field in FIELDS:
        if field in ("x", "y", "w", "h"):
            assert np.allclose(a[field], b[field], rtol=0, atol=box_tol), field
        else:
            assert np.array_equal(a[field], b[field]), field
    assert np.abs(a["class_confidence"] - b["class_confidence"]).max(initial=0) <= score_tol


def assert_same_output(a: torch.Tensor, b: torch.Tensor) -> None:
    """Head outputs ``[B, 4 + nc, A]`` equal to float32 rounding: boxes (pixels) to 1e-3, scores to 1e-6."""
    assert a.shape == b.shape
    assert torch.allclose(a[:, :4], b[:, :4], rtol=1e-6, atol=1e-3)
    assert torch.allclose(a[:, 4:], b[:, 4:], rtol=0, atol=1e-6)


def test_same_detections_as_the_fake_quant_model_on_the_bundled_recording(trained, runtime):
    detections = 0
    for boxes_a, boxes_b, state_a, state_b in stream_both(trained, runtime, SAMPLE):
        assert_same_boxes(boxes_a, boxes_b)  # same rates into the (fused) float head
        assert_same_state(state_a, state_b)
        detections += len(boxes_a)
    assert detections > 50


def test_exact_fake_quant_arithmetic_on_a_synthetic_recording(runtime, synthetic_recording):
    reference = float64_reference(load_detector(default_model_path()))
    windows = 0
    for boxes_a, boxes_b, state_a, state_b in stream_both(reference, runtime, synthetic_recording, conf_thres=0.01):
        assert_same_state(state_a, state_b)
        assert_same_boxes(boxes_a, boxes_b)
        windows += 1
    assert windows == 40


def _calibrated(cfg: DetectorConfig) -> SpikingYOLO:
    """A random detector with BN statistics from a few windows (so deep layers fire) and random BN affines.

    The random affines stand in for training: with γ = 1, β = 0 and statistics from so few windows, a BN output can
    be exactly 0 in real arithmetic, which puts a membrane exactly on a rounding boundary (a tie that float64 rounds
    either way); trained models do not have such exact coincidences.
    """
    torch.manual_seed(0)
    model = calibrated(build_detector(cfg), (_input(cfg, seed, batch=2) for seed in range(3)))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.6, 1.4)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _input(cfg, seed=0, batch=1):
    h, w = cfg.padded_size
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 4, (cfg.bins, batch, 2, h, w), generator=g, dtype=torch.uint8)


def _set_neurons(model: SpikingYOLO, per_channel: bool, **neuron) -> None:
    g = torch.Generator().manual_seed(1)
    for lif in model.modules():
        if isinstance(lif, IntegerLIF):
            lif.config = dataclasses.replace(lif.config, per_channel_threshold=per_channel, **neuron)
            lif.grid = lif.config.grid
            shape = (lif.channels, 1, 1) if per_channel else ()
            lif.log_threshold = torch.nn.Parameter(torch.empty(shape).uniform_(-0.3, 0.3, generator=g))


@pytest.mark.parametrize(("per_channel", "neuron"), [
    (False, {}),
    (True, {}),
    (True, {"reset": "soft"}),
    (False, {"lb": -2.0, "leak": 0.25}),
    (True, {"lb": -1.0, "step": 0.5, "leak": 1.0}),
    (False, {"leak": 0.0}),
])
def test_neuron_variants_match_exact_fake_quant(per_channel, neuron):
    model = _calibrated(DetectorConfig(**TINY))
    _set_neurons(model, per_channel, **neuron)
    runtime = Runtime.from_model(model)
    reference = float64_reference(model)
    state_a = state_b = None
    spikes = 0
    with torch.no_grad():
        for seed in range(4):
            x = _input(model.config, 10 + seed, batch=2)
            y_a, state_a = reference(x, state_a)
            y_b, state_b = runtime(x, state_b)
            assert_same_state(state_a, state_b, neuron.get("step", 1.0))
            assert_same_output(y_a, y_b)
            spikes += sum(int(c.ne(0).sum()) for c in state_b.values())
    assert spikes > 0


def test_compiled_kernels_equal_the_pytorch_integer_ops():
    model = _calibrated(DetectorConfig(**TINY))
    _set_neurons(model, True, reset="soft", lb=-2.0)
    fast, reference = Runtime.from_model(model), Runtime.from_model(model, backend="reference")
    state_a = state_b = None
    with torch.no_grad():
        for seed in range(3):
            x = _input(model.config, seed, batch=2)
            if seed != 1:  # sparse like events: the fast path takes the event-driven first conv
                x *= torch.rand(x.shape, generator=torch.Generator().manual_seed(seed)) < 0.02
            y_a, state_a = fast(x, state_a)
            y_b, state_b = reference(x, state_b)
            assert_same_output(y_b, y_a)  # the fused head against the Detect head
            assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_physically_pruned_models_export_and_match():
    from models.compress.prune import remove_channels

    model = _calibrated(DetectorConfig(**TINY))
    widths = model.config.widths()
    keep = {name: range(0, widths[name], 2) for name in ("stem1", "stage0", "stage1.0", "neck", "head0.box.0")}
    pruned = remove_channels(model, keep).eval()
    runtime, unfused = Runtime.from_model(pruned), Runtime.from_model(pruned, backend="reference")
    assert footprint(runtime)["params"] < footprint(Runtime.from_model(model))["params"]
    reference = float64_reference(pruned)
    state_a = state_b = state_c = None
    with torch.no_grad():
        for seed in range(3):
            x = _input(pruned.config, seed)
            y_a, state_a = reference(x, state_a)
            y_b, state_b = runtime(x, state_b)
            y_c, state_c = unfused(x, state_c)
            assert_same_state(state_a, state_b)
            assert_same_state(state_a, state_c)
            assert_same_output(y_a, y_b)
            assert torch.equal(y_a, y_c)  # the unfused reference path: bit-identical, head included


@pytest.mark.parametrize("head_bits", [4, 2])
def test_a_fake_quantized_head_loads_from_its_packed_codes(head_bits, tmp_path):
    model = _calibrated(DetectorConfig(**TINY, head_bits=head_bits))
    path = export_model(model, tmp_path / "m.spq")
    loaded, unfused, in_memory = Runtime.load(path), Runtime.load(path, backend="reference"), Runtime.from_model(model)
    reference = float64_reference(model)
    state_a = state_b = state_c = state_d = None
    with torch.no_grad():
        for seed in range(3):
            x = _input(model.config, seed, batch=2)
            y_a, state_a = reference(x, state_a)
            y_b, state_b = loaded(x, state_b)
            y_c, state_c = in_memory(x, state_c)
            y_d, state_d = unfused(x, state_d)
            assert torch.equal(y_b, y_c) and all(torch.equal(state_b[k], state_c[k]) for k in state_b)
            assert_same_state(state_a, state_b)
            assert_same_state(state_a, state_d)
            assert_same_output(y_a, y_b)
            assert_same_output(y_a, y_d)
            if head_bits > 2:
                # codes × scale is the fake-quant forward's weight to the bit (ternary: to an ulp, as the forward
                # adds the rounding to the raw weight, w + (q − w), which a weight below q/2 does not undo exactly)
                assert torch.equal(y_a, y_d)


def _rates(head, batch: int, size: tuple[int, int], seed: int) -> list[torch.Tensor]:
    """Firing rates (spike count / T, T = 5) of ``batch`` streams for each level of ``head`` at input ``size``."""
    g = torch.Generator().manual_seed(seed)
    channels = head.cv2[0][0].conv.in_channels
    rates = []
    for stride in head.stride.int().tolist():
        counts = torch.randint(0, 6, (batch, channels, size[0] // stride, size[1] // stride), generator=g)
        rates.append(counts.masked_fill(torch.rand(counts.shape, generator=g) < 0.6, 0) / 5)  # mostly silent
    return rates


@pytest.mark.parametrize("head_bits", [32, 4])
def test_fused_head_matches_the_detect_head(head_bits):
    from models.compress.prune import remove_channels
    from models.inference.fused_head import FusedDetect

    model = build_detector(DetectorConfig(**TINY, head_bits=head_bits)).eval()
    with torch.no_grad():  # BN statistics and affines away from the identity, so folding them is exercised
        for module in model.head.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.6, 1.4)
                module.bias.uniform_(-0.2, 0.2)
    widths = model.config.widths()
    pruned = remove_channels(model, {n: range(0, widths[n], 2) for n in ("neck", "head0.box.0", "head1.cls.0")})
    for detector in (model, pruned.eval()):
        head = detector.head
        assert FusedDetect.supports(head)
        fused = FusedDetect(head)
        with torch.no_grad():
            for batch, size, seed in ((1, (64, 96), 0), (3, (64, 96), 1), (2, (128, 64), 2)):  # anchors per size
                rates = _rates(head, batch, size, seed)
                assert_same_output(head(rates)[0], fused(rates))
    assert not FusedDetect.supports(torch.nn.Identity())


def test_a_batch_of_streams_equals_each_stream_alone(runtime):
    """Three streams (different windows and states) in one call: per stream the same outputs and states."""
    recording = open_recording(SAMPLE)
    windows = list(iter_windows(recording, runtime.config.window_us))
    detector = StreamingDetector(runtime).for_sensor(recording.width, recording.height)

    def histogram(i: int) -> torch.Tensor:
        window = windows[i]
        return torch.from_numpy(detector.histogram(detector.letterbox.map_events(window.events), window.t_start))

    singles = []
    with torch.inference_mode():
        for previous, current in ((10, 11), (30, 31), (50, 52)):
            _, state = runtime(histogram(previous).unsqueeze(1))  # a live state, different per stream
            singles.append((histogram(current).unsqueeze(1), state, *runtime(histogram(current).unsqueeze(1), state)))
        x = torch.cat([s[0] for s in singles], 1)  # [T, 3, 2, H, W]
        state = {k: torch.cat([s[1][k] for s in singles]) for k in singles[0][1]}  # int8 [3, C, h, w]
        y, new = runtime(x, state)
    assert y.shape[0] == 3 and set(new) == set(state)
    for b, (_, _, y_one, new_one) in enumerate(singles):
        assert_same_output(y_one, y[b:b + 1])
        assert all(torch.equal(new[k][b:b + 1], new_one[k]) for k in new_one)
    assert not torch.equal(new["neck.outputs.0"][0], new["neck.outputs.0"][1])  # the streams did differ


def test_unexportable_neurons_are_refused():
    model = _calibrated(DetectorConfig(**TINY))
    _set_neurons(model, False, leak=0.3)
    with pytest.raises(ExportFormatError, match="shift"):
        Runtime.from_model(model)


def test_state_shapes_sizes_and_validation(runtime):
    state = runtime.init_state()
    assert all(v.dtype == torch.int8 and v.shape[0] == 1 for v in state.values())
    sizes = footprint(runtime)
    assert sizes["params"] > 400_000
    assert sizes["weight_bytes"] < runtime.source.stat().st_size < sizes["weight_bytes"] + 65_536
    assert sizes["state_bytes_per_stream"] == state_nbytes(state) == sum(v.numel() for v in state.values())
    assert sizes["state_bytes_per_stream_packed"] == sum(-(-v.numel() * 2 // 8) for v in state.values())  # ternary
    h, w = runtime.config.padded_size
    x = torch.zeros(runtime.config.bins, 1, 2, h, w, dtype=torch.uint8)
    _, new = runtime(x, state)
    assert set(new) == set(state) and all(new[k].shape == state[k].shape for k in state)
    with pytest.raises(ValueError, match="expected int8"):
        runtime(x, {**state, "backbone.stem1.lif": state["backbone.stem1.lif"].float()})
    with pytest.raises(ValueError, match="state must be"):
        runtime(x, {"x": state["backbone.stem1.lif"]})
    with pytest.raises(ValueError, match="expected input"):
        runtime(x[..., :32, :])
    with pytest.raises(ValueError, match="unknown runtime backend"):
        Runtime.load(runtime.source, backend="fast")


def test_the_runtime_runs_the_exported_graph(trained, runtime):
    """The file's graph is the trained model's graph (same nodes, edges and groups), bound to integer layers."""
    assert [(n.name, n.kind, n.inputs, n.group) for n in runtime.graph] == \
        [(n.name, n.kind, n.inputs, n.group) for n in trained.graph]
    assert runtime.graph.state_names == list(runtime.init_state())
    assert all(isinstance(n.module, IntConv) for n in runtime.graph.of_kind("conv"))
    outputs = {n.name: n.attrs["output"] for n in runtime.graph.of_kind("conv")}
    # θ folds into a conv that one LIF alone reads; currents that are added or read twice stay in real units
    assert outputs["backbone.stem1.conv_bn"] == outputs["backbone.stages.0.0.conv1"] == "theta"
    assert outputs["backbone.stages.0.0.conv2"] == outputs["neck.lateral.2"] == "real"


def test_independent_streams_on_threads_match_sequential_runs(runtime):
    recording = open_recording(SAMPLE)
    windows = list(iter_windows(recording, runtime.config.window_us))[:12]
    detector = StreamingDetector(runtime).for_sensor(recording.width, recording.height)
    streams = [windows[i:] + windows[:i] for i in (0, 3, 6, 9)]  # four streams, each at another point

    def run(stream):
        return [boxes for _, boxes in detector.run(stream)]

    expected = [run(s) for s in streams]
    results: list = [None] * len(streams)
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, run(streams[i]))) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for want, got in zip(expected, results, strict=True):
        for a, b in zip(want, got, strict=True):
            assert_same_boxes(a, b)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_a_thousand_concurrent_states_take_the_reported_size(trained, runtime):
    from models.compress.accounting import memory  # what `spquant report` prints

    report, sizes = memory(trained), footprint(runtime)
    assert report["state_bytes_int8"] == sizes["state_bytes_per_stream"]
    assert report["state_bytes"] == sizes["state_bytes_per_stream_packed"]
    h, w = runtime.config.padded_size
    x = torch.randint(0, 3, (runtime.config.bins, 1, 2, h, w), dtype=torch.uint8)
    with torch.inference_mode():
        _, live = runtime(x)  # a real, non-zero state, so every page is touched when copied
    per_stream = sizes["state_bytes_per_stream"]
    before = _rss_bytes()
    states = [{k: v.clone() for k, v in live.items()} for _ in range(1000)]
    grown = _rss_bytes() - before
    assert sum(state_nbytes(s) for s in states) == 1000 * per_stream
    assert all(t.untyped_storage().nbytes() == t.numel() for s in states[:10] for t in s.values())  # int8, no slack
    # Only an upper bound: after other tests the allocator reuses freed pages, so growth can be below the payload.
    assert grown <= 1.25 * 1000 * per_stream + (8 << 20)


def test_onnx_step_reproduces_the_runtime_detections(runtime, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from models.inference.onnx_step import OnnxStepModel, export_onnx

    onnx_model = OnnxStepModel(export_onnx(runtime, tmp_path / "m.onnx"))
    assert onnx_model.config == runtime.config
    recording = open_recording(SAMPLE)
    a = StreamingDetector(runtime).for_sensor(recording.width, recording.height)
    b = StreamingDetector(onnx_model).for_sensor(recording.width, recording.height)
    state_a = state_b = None
    detections = 0
    for window in iter_windows(recording, a.window_us):
        boxes_a, state_a = a.step(window.events, window.t_start, state_a)
        boxes_b, state_b = b.step(window.events, window.t_start, state_b)
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)  # the integer part is exact
        # the float head runs on ONNX Runtime's kernels: boxes and scores agree to float32 rounding
        assert len(boxes_a) == len(boxes_b) and np.array_equal(boxes_a["class_id"], boxes_b["class_id"])
        for field in ("x", "y", "w", "h"):
            assert np.allclose(boxes_a[field], boxes_b[field], atol=1e-3), field
        assert np.allclose(boxes_a["class_confidence"], boxes_b["class_confidence"], atol=1e-5)
        detections += len(boxes_a)
    assert detections > 50
