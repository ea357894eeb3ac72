"""``step_batch`` on the torch-free engine, the service's batched path: each stream of a batch gets what it gets alone
(states and firing rates bit for bit, boxes to float rounding), whatever its sensor, thresholds or place in the batch;
a stream that resets mid-way starts fresh; and no stream's state is touched by another's step."""

import numpy as np
import pytest

from data.events import make_events
from data.formats.recording import open_recording
from data.windows import iter_windows
from models.inference.export import export_model
from models.inference.numpy_runtime import NumpyRuntime
from models.inference.stream import SpikeMeter, StreamingDetector, WindowJob, step_batch
from models.networks.checkpoint import load_detector
from tests.conftest import REPO
from tests.helpers import SAMPLE


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    spq = export_model(load_detector(REPO / "models" / "weights" / "spquant-n.pt"),
                       tmp_path_factory.mktemp("spq") / "bundled.spq")
    return NumpyRuntime.load(spq)


def _scaled(window, factor):
    """The window's events as a sensor ``factor`` times larger records them."""
    ev = window.events
    return make_events(ev["t"], ev["x"] * factor, ev["y"] * factor, ev["p"])


def _streams(engine):
    """Three streams: the recording at three places, one through a 2× larger sensor, with their own thresholds;
    each is ``(detector, [(events, t_start)] * 6)``."""
    recording = open_recording(SAMPLE)
    base = StreamingDetector(engine)
    windows = list(iter_windows(recording, base.window_us))
    width, height = recording.width, recording.height
    return [
        (base.for_sensor(width, height), [(w.events, w.t_start) for w in windows[20:26]]),
        (StreamingDetector(engine, conf_thres=0.1).for_sensor(2 * width, 2 * height),
         [(_scaled(w, 2), w.t_start) for w in windows[28:34]]),
        (StreamingDetector(engine, conf_thres=0.5).for_sensor(width, height),
         [(w.events, w.t_start) for w in windows[40:46]]),
    ]


RESET = (1, 3)  # stream 1 starts over (a fresh state) at its window 3


def _alone(detector, windows, stream):
    """``(boxes, state, firing rate)`` of each window through the single-stream path."""
    out, state = [], None
    for k, (events, t_start) in enumerate(windows):
        if (stream, k) == RESET:
            state = None
        meter = SpikeMeter()
        step_batch([WindowJob(detector, events, t_start, state)], meter)  # its firing rate alone
        boxes, state = detector.step(events, t_start, state)
        out.append((boxes, state, meter.rates()[0]))
    return out


def _assert_same(got, expected):
    """States and firing rates bit for bit (the integer network), boxes to float32 rounding (BLAS may sum the float
    head's wider GEMM in another order)."""
    (boxes, state, rate), (ref_boxes, ref_state, ref_rate) = got, expected
    assert rate == ref_rate
    assert state.keys() == ref_state.keys() and all(np.array_equal(state[k], ref_state[k]) for k in state)
    assert len(boxes) == len(ref_boxes)
    for field in ("t", "class_id"):
        assert np.array_equal(boxes[field], ref_boxes[field]), field
    for field in ("x", "y", "w", "h", "class_confidence"):
        np.testing.assert_allclose(boxes[field], ref_boxes[field], rtol=1e-5, atol=1e-3, err_msg=field)


def test_each_stream_of_a_batch_gets_what_it_gets_alone(engine):
    streams = _streams(engine)
    alone = [_alone(detector, windows, i) for i, (detector, windows) in enumerate(streams)]
    states = [None] * len(streams)
    boxes = 0
    for k in range(6):
        order = [(k + i) % len(streams) for i in range(len(streams))]  # each stream takes every place in the batch
        jobs, before = [], []
        for i in order:
            if (i, k) == RESET:
                states[i] = None
            detector, windows = streams[i]
            jobs.append(WindowJob(detector, *windows[k], states[i]))
            before.append(None if states[i] is None else {n: c.copy() for n, c in states[i].items()})
        meter = SpikeMeter()
        results = step_batch(jobs, meter)
        for i, job, kept, (got_boxes, got_state), rate in zip(order, jobs, before, results, meter.rates(),
                                                                strict=True):
            if kept is not None:  # the step left the state it was given as it was
                assert all(np.array_equal(job.state[n], kept[n]) for n in kept)
            _assert_same((got_boxes, got_state, rate), alone[i][k])
            states[i] = got_state
            boxes += len(got_boxes)
    assert boxes > 0
    # the streams' states are their own arrays: changing one leaves the others (and the next batch) alone
    first = next(iter(states[0]))
    assert not any(np.shares_memory(states[0][first], s[first]) for s in states[1:])


def test_a_reset_stream_equals_a_new_one(engine):
    detector, windows = _streams(engine)[1]
    restarted = _alone(detector, windows, 1)[RESET[1]:]
    fresh = _alone(detector, windows[RESET[1]:], -1)
    for got, expected in zip(restarted, fresh, strict=True):
        _assert_same(got, expected)
