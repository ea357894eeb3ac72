"""The torch-free runtime: the torch runtime's states bit for bit, its head to float32 rounding, ultralytics' NMS.

:class:`~models.inference.numpy_runtime.NumpyRuntime` runs the same layer graph with numpy and numba; these tests
stream the bundled recording through both runtimes (the bundled model and the pruned one with its 4-bit head) and
compare every window, run a batch against each stream alone, stream through the one ``StreamingDetector`` /
``step_batch`` path with a ``SpikeMeter``, load through ``load_model``, and import the engine with torch and
ultralytics blocked.
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from data.formats.recording import open_recording
from data.windows import iter_windows
from models.compress.accounting import footprint
from models.inference.export import export_model
from models.inference.loading import load_model, resolve_runtime
from models.inference.numpy_detect import non_max_suppression
from models.inference.numpy_runtime import NumpyRuntime
from models.inference.runtime import Runtime
from models.inference.stream import SpikeMeter, StreamingDetector, WindowJob, step_batch
from models.networks.checkpoint import load_detector
from models.networks.quant import LevelGrid
from models.networks.ultralytics_parts import non_max_suppression as ultralytics_nms
from tests.conftest import REPO
from tests.helpers import SAMPLE

MODELS = {"bundled": REPO / "models" / "weights" / "spquant-n.pt",
          "pruned": REPO / "models" / "weights" / "spquant-n-pruned.pt"}  # the pruned one has a 4-bit head


@pytest.fixture(scope="module", params=sorted(MODELS))
def spq(request, tmp_path_factory):
    return export_model(load_detector(MODELS[request.param]), tmp_path_factory.mktemp("spq") / "m.spq")


@pytest.fixture(scope="module")
def bundled_spq(tmp_path_factory):
    return export_model(load_detector(MODELS["bundled"]), tmp_path_factory.mktemp("spq") / "bundled.spq")


def windows_of(runtime: Runtime):
    """``(detector, window, counts [T, 2, H, W] uint8)`` for every window of the bundled recording."""
    recording = open_recording(SAMPLE)
    detector = StreamingDetector(runtime).for_sensor(recording.width, recording.height)
    for window in iter_windows(recording, detector.window_us):
        yield detector, window, detector.counts(window.events, window.t_start)


def assert_same_head_output(a: np.ndarray, b: np.ndarray) -> None:
    """``[B, 4 + nc, A]`` equal to float32 rounding: boxes (pixels) to 1e-3, scores to 1e-6."""
    assert a.shape == b.shape and b.dtype == np.float32
    assert np.allclose(a[:, :4], b[:, :4], rtol=1e-6, atol=1e-3)
    assert np.abs(a[:, 4:] - b[:, 4:]).max() <= 1e-6


def assert_same_boxes(a: np.ndarray, b: np.ndarray) -> None:
    """Label-dtype boxes: same count, times and classes; coordinates and scores to float32 rounding."""
    assert len(a) == len(b)
    for field in ("t", "class_id"):
        assert np.array_equal(a[field], b[field]), field
    for field in ("x", "y", "w", "h"):
        assert np.allclose(a[field], b[field], rtol=0, atol=1e-3), field
    assert np.abs(a["class_confidence"] - b["class_confidence"]).max(initial=0) <= 1e-6


def test_same_states_head_outputs_and_boxes_as_the_torch_runtime(spq):
    reference, engine = Runtime.load(spq), NumpyRuntime.load(spq)
    state_t, state_n = None, engine.init_state()
    windows = boxes = 0
    for detector, window, counts in windows_of(reference):
        with torch.inference_mode():
            y_t, state_t = reference(torch.from_numpy(counts).unsqueeze(1), state_t)
        y_n, state_n = engine(counts[:, None], state_n)  # [T, 1, 2, H, W]
        assert set(state_n) == set(state_t)
        for name, codes in state_t.items():
            assert state_n[name].dtype == np.int8 and np.array_equal(state_n[name], codes.numpy()), name
        assert_same_head_output(y_t.numpy(), y_n)
        (dets,) = non_max_suppression(y_n, conf_thres=0.25, iou_thres=0.6, max_det=100)
        end = window.t_start + detector.window_us
        assert_same_boxes(detector.boxes(y_t, window.t_start), detector._to_boxes(dets, end))
        windows += 1
        boxes += len(dets)
    assert windows == 60 and boxes > 50


def test_event_driven_and_gemm_convs_give_the_torch_runtimes_integers(spq):
    """Each conv path of the channel-last engine (event-driven and GEMM, over spikes and over the histogram, with
    padded channel counts in the pruned model) gives the torch runtime's states bit for bit and its head output."""
    reference = Runtime.load(spq)
    sparse, dense = NumpyRuntime.load(spq), NumpyRuntime.load(spq)
    sparse.ops.sparse_spikes, dense.ops.sparse_spikes = np.inf, 0.0  # every k×k spike conv event-driven / a GEMM
    t, (h, w) = reference.config.bins, reference.config.padded_size
    busy = np.random.default_rng(0).integers(0, 4, (t, 2, 2, h, w), dtype=np.uint8)  # the first conv's GEMM
    recorded = [counts for i, (_, _, counts) in enumerate(windows_of(reference)) if i in (30, 31)]
    for x in (busy, np.stack(recorded, axis=1)):  # the event-driven first conv
        with torch.inference_mode():
            y_t, state_t = reference(torch.from_numpy(x))
        for engine in (sparse, dense):
            y_n, state_n = engine(x)
            for name, codes in state_t.items():
                assert np.array_equal(state_n[name], codes.numpy()), name
            assert_same_head_output(y_t.numpy(), y_n)
    assert any(codes.any() for codes in state_t.values())


def test_nms_matches_ultralytics_on_crowded_random_predictions():
    rng = np.random.default_rng(0)
    for seed in range(20):
        a, nc = 400, 1 + seed % 3
        centres = rng.uniform(0, 60, (1, 2, a)).astype(np.float32)  # crowded: many overlaps, across classes too
        sizes = rng.uniform(2, 30, (1, 2, a)).astype(np.float32)
        scores = rng.uniform(0, 1, (1, nc, a)).astype(np.float32) ** 3
        y = np.concatenate([centres, sizes, scores], 1)
        for conf, iou, max_det in ((0.25, 0.6, 100), (0.05, 0.45, 7), (0.5, 0.7, 300)):
            (expected,) = ultralytics_nms(torch.from_numpy(y), conf_thres=conf, iou_thres=iou, max_det=max_det, nc=nc)
            (got,) = non_max_suppression(y, conf_thres=conf, iou_thres=iou, max_det=max_det)
            assert got.dtype == np.float32 and np.array_equal(expected.numpy(), got), (seed, conf, iou, max_det)


def test_a_batch_equals_each_stream_alone(bundled_spq):
    engine = NumpyRuntime.load(bundled_spq)
    recording = open_recording(SAMPLE)
    detector = StreamingDetector(Runtime.load(bundled_spq)).for_sensor(recording.width, recording.height)
    windows = list(iter_windows(recording, detector.window_us))
    streams = [windows[20:24], windows[40:44]]  # two streams at different places of the recording
    alone = []
    for stream in streams:
        state = None
        for window in stream:
            y, state = engine(detector.counts(window.events, window.t_start)[:, None], state)
        alone.append((y, state))
    state = engine.init_state(2)
    for pair in zip(*streams, strict=True):
        x = np.stack([detector.counts(w.events, w.t_start) for w in pair], axis=1)  # [T, 2, 2, H, W]
        y, state = engine(x, state)
    for i, (y_alone, state_alone) in enumerate(alone):
        assert_same_head_output(y_alone, y[i : i + 1])  # float head: BLAS may sum a wider GEMM in another order
        for name, codes in state_alone.items():
            assert np.array_equal(state[name][i : i + 1], codes), name


def test_bad_input_or_state_raises_value_error(bundled_spq):
    engine = NumpyRuntime.load(bundled_spq)
    t, (h, w) = engine.config.bins, engine.config.padded_size
    x = np.zeros((t, 1, 2, h, w), dtype=np.uint8)
    state = engine.init_state()
    bad_inputs = [x.astype(np.float32), x[:, :, :1], x[..., :-32], x[0], torch.from_numpy(x)]
    for bad in bad_inputs:
        with pytest.raises(ValueError):
            engine(bad, state)
    name = next(iter(state))
    bad_states = [{**state, name: state[name].astype(np.int16)}, {**state, name: state[name][..., :-1]},
                  {k: v for k, v in state.items() if k != name}, engine.init_state(2), {**state, name: [0]}]
    for bad in bad_states:
        with pytest.raises(ValueError):
            engine(x, bad)
    y, new = engine(x, state)
    assert y.shape[:2] == (1, 4 + len(engine.config.class_names)) and set(new) == set(state)


def test_size_figures_and_levels_equal_the_torch_accounting(spq):
    reference, engine = Runtime.load(spq), NumpyRuntime.load(spq)
    expected = footprint(reference)
    assert engine.footprint() == {k: expected[k] for k in engine.footprint()}
    neuron = reference.config.neuron()
    assert engine.membrane_levels() == LevelGrid(neuron.lb, neuron.ub, neuron.step).levels()
    assert engine.config.sensor_size == reference.config.sensor_size
    for name in ("variant", "scale", "weight_bits", "first_layer_bits", "class_names"):
        assert getattr(engine.config, name) == getattr(reference.config, name), name


def test_step_batch_and_spike_meter_give_the_torch_runtimes_states_boxes_and_rates(bundled_spq):
    """The streaming path on both engines, a batch of a carried and a fresh stream: states bit for bit, boxes to
    float rounding, firing rates exactly (the same spikes)."""
    recording = open_recording(SAMPLE)
    detectors = [StreamingDetector(model).for_sensor(recording.width, recording.height)
                 for model in (Runtime.load(bundled_spq), NumpyRuntime.load(bundled_spq))]
    windows = list(iter_windows(recording, detectors[0].window_us))
    results = []
    for detector in detectors:
        states: list = [None, None]
        out = []
        for k in range(28, 32):  # stream 0 from the start of the recording's busy part, stream 1 joins fresh at 30
            pair = [windows[k], windows[k - 2]] if k >= 30 else [windows[k]]
            meter = SpikeMeter()
            done = step_batch([WindowJob(detector, w.events, w.t_start, st)
                               for w, st in zip(pair, states, strict=False)], meter)
            states[:len(done)] = [state for _, state in done]
            out.append(([boxes for boxes, _ in done], [dict(s) for _, s in done], meter.rates()))
        results.append(out)
    boxes = 0
    for (boxes_t, states_t, rates_t), (boxes_n, states_n, rates_n) in zip(*results, strict=True):
        assert rates_n == rates_t
        for a, b in zip(boxes_t, boxes_n, strict=True):
            assert_same_boxes(a, b)
            boxes += len(b)
        for a, b in zip(states_t, states_n, strict=True):
            assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k]) for k in a)
    assert boxes > 0
    # alone, the numpy detector's step gives what its batch gave stream 0
    state = None
    for k in range(28, 32):
        last, state = detectors[1].step(windows[k].events, windows[k].t_start, state)
    assert_same_boxes(last, results[1][-1][0][0])


def test_observers_see_read_only_views_in_the_torch_layout(bundled_spq):
    engine, reference = NumpyRuntime.load(bundled_spq), Runtime.load(bundled_spq)
    t, (h, w) = engine.config.bins, engine.config.padded_size
    x = np.random.default_rng(0).integers(0, 3, (t, 2, 2, h, w), dtype=np.uint8)
    shapes_n, shapes_t = {}, {}
    engine(x, observe=lambda node, value: shapes_n.setdefault(node.name, value.shape))
    with torch.inference_mode():
        reference(torch.from_numpy(x), observe=lambda node, value: shapes_t.setdefault(node.name, tuple(value.shape)))
    lifs = [n.name for n in engine.graph.of_kind("lif")]
    assert {k: shapes_n[k] for k in lifs} == {k: shapes_t[k] for k in lifs}
    with pytest.raises(ValueError, match="read-only"):
        engine(x, observe=lambda node, value: value.__setitem__(..., 0))


def test_load_model_picks_the_engine(bundled_spq):
    assert isinstance(load_model(bundled_spq, runtime="numpy"), NumpyRuntime)
    assert isinstance(load_model(bundled_spq, runtime="torch"), Runtime)
    assert isinstance(load_model(bundled_spq), Runtime)  # auto: torch is installed here
    assert resolve_runtime("auto") == "torch"
    with pytest.raises(ValueError, match="runtime must be one of"):
        load_model(bundled_spq, runtime="onnx")
    with pytest.raises(ValueError, match="needs torch"):
        load_model(MODELS["bundled"], runtime="numpy")


TORCH_FREE = textwrap.dedent("""
    import sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "ultralytics", "torchvision"):
                raise ImportError(f"blocked import of {name}")
            return None

    sys.meta_path.insert(0, Block())

    from data.formats.recording import open_recording
    from data.geometry import Letterbox
    from data.representation import StackedHistogram
    from data.windows import iter_windows
    from models.inference.numpy_runtime import NumpyRuntime

    engine = NumpyRuntime.load(sys.argv[1])
    cfg = engine.config
    recording = open_recording(sys.argv[2])
    letterbox = Letterbox(recording.width, recording.height, cfg.input_width, cfg.input_height)
    histogram = StackedHistogram(bins=cfg.bins, window_us=cfg.window_us, height=cfg.input_height,
                                 width=cfg.input_width, cutoff=cfg.cutoff)
    window = list(iter_windows(recording, cfg.window_us))[int(sys.argv[3])]
    counts = histogram(letterbox.map_events(window.events), window.t_start)  # [T, 2, H, W] uint8
    (dets,), state = engine.detect(counts[:, None], engine.init_state())
    assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "ultralytics")]
    for row in dets:
        print(" ".join(f"{v:.4f}" for v in row))
""")


def test_runs_end_to_end_with_torch_and_ultralytics_blocked(bundled_spq):
    index = 30
    done = subprocess.run([sys.executable, "-c", TORCH_FREE, str(bundled_spq), str(SAMPLE), str(index)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    got = np.array([list(map(float, line.split())) for line in done.stdout.split("\n") if line], dtype=np.float64)
    # the same window through the torch runtime and ultralytics' NMS, fresh state
    reference = Runtime.load(bundled_spq)
    detector, _, counts = next(item for i, item in enumerate(windows_of(reference)) if i == index)
    dets = detector.detect(counts, None)[0]
    assert len(dets) > 0 and got.shape == dets.shape
    assert np.array_equal(got[:, 5], dets[:, 5]) and np.allclose(got[:, :5], dets[:, :5], atol=2e-3)
