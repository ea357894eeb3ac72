"""Batching windows of several streams into one forward pass: state stacking, ``step_batch`` and the service's
``WindowBatcher``."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from data.windows import iter_windows
from models.inference.runtime import Runtime
from models.inference.stream import SpikeMeter, StreamingDetector, WindowJob, step_batch
from models.networks.checkpoint import load_detector
from models.networks.state import split_state, stack_states
from service.batching import WindowBatcher, run_isolated
from tests.helpers import random_events
from tests.service_support import TINY_HEIGHT as H
from tests.service_support import TINY_WIDTH as W
from tests.service_support import tiny_checkpoint


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_detector(tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt"))


def _streams(sensors=((W, H), (2 * W, 2 * H), (W, H)), windows=5):
    """Window lists of recordings from sensors of different sizes (letterboxed differently)."""
    streams = []
    for seed, (width, height) in enumerate(sensors):
        ev = random_events(1500, t_max=windows * 50_000, width=width, height=height, seed=seed)
        streams.append(list(iter_windows([ev], 50_000))[:windows])
    return streams


def _alone(detector, windows):
    state, out = None, []
    for w in windows:
        boxes, state = detector.step(w.events, w.t_start, state)
        out.append((boxes, state))
    return out


def _batched(detectors, streams):
    states = [None] * len(streams)
    out = [[] for _ in streams]
    for k in range(len(streams[0])):
        results = step_batch([WindowJob(d, s[k].events, s[k].t_start, st)
                              for d, s, st in zip(detectors, streams, states, strict=True)])
        for i, (boxes, state) in enumerate(results):
            out[i].append((boxes, state))
            states[i] = state
    return out


def _states_equal(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_states_equal(a[k], b[k]) for k in a)
    return torch.equal(a, b)


def test_stack_and_split_round_trip_with_fresh_streams():
    one = {"lif": torch.ones(1, 2, 3, 3), "block": {"lif": torch.full((1, 4, 2, 2), 2.0)}}
    stacked = stack_states([None, one, None])
    assert stacked["lif"].shape == (3, 2, 3, 3) and stacked["block"]["lif"].shape == (3, 4, 2, 2)
    fresh, back, fresh2 = split_state(stacked, [1, 1, 1])
    assert _states_equal(back, one)
    assert not fresh["lif"].any() and not fresh2["block"]["lif"].any()
    back["lif"].add_(5)  # the parts are copies, not views of the batch
    assert stacked["lif"][1].eq(1).all()
    assert stack_states([None, None]) is None and split_state(None, [1, 1]) == [None, None]


def test_stacking_states_of_different_models_is_an_error():
    with pytest.raises(ValueError, match="same model"):
        stack_states([{"a": torch.zeros(1, 1)}, {"b": torch.zeros(1, 1)}])


def _assert_same_results(got, expected):
    for (boxes, state, *_), (ref_boxes, ref_state) in zip(got, expected, strict=True):
        assert _states_equal(state, ref_state)  # spikes and membranes identical
        assert len(boxes) == len(ref_boxes) and np.array_equal(boxes["class_id"], ref_boxes["class_id"])
        for field in ("t", "x", "y", "w", "h", "class_confidence"):  # the float head may round in the last bit
            np.testing.assert_allclose(boxes[field], ref_boxes[field], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("integer", [False, True], ids=["fake-quant", "integer-runtime"])
def test_step_batch_equals_each_stream_alone(model, integer):
    streams = _streams()
    net = Runtime.from_model(model) if integer else model
    detectors = [StreamingDetector(net, conf_thres=c).for_sensor(*s)
                 for c, s in zip((0.0, 0.0, 0.01), ((W, H), (2 * W, 2 * H), (W, H)), strict=True)]
    batched = _batched(detectors, streams)
    for detector, windows, got in zip(detectors, streams, batched, strict=True):
        _assert_same_results(got, _alone(detector, windows))
    assert any(len(b) for per_stream in batched for b, _ in per_stream)


def test_step_batch_edge_cases(model, tmp_path):
    assert step_batch([]) == []
    other = load_detector(tiny_checkpoint(tmp_path / "other.pt"))
    window = _streams(((W, H),), windows=1)[0][0]
    jobs = [WindowJob(StreamingDetector(m), window.events, window.t_start) for m in (model, other)]
    with pytest.raises(ValueError, match="same model"):
        step_batch(jobs)


def test_a_job_that_cannot_run_fails_alone(model):
    streams = _streams(((W, H), (W, H)), windows=1)
    detector = StreamingDetector(model, conf_thres=0.0)
    good = [WindowJob(detector, s[0].events, s[0].t_start) for s in streams]
    state = step_batch(good[:1])[0][1]
    leaf = state
    while isinstance(leaf, dict):
        parent, key = leaf, next(iter(leaf))
        leaf = leaf[key]
    parent[key] = torch.zeros(1, 3, 5, 7)  # a state tensor of the wrong shape: this job's forward pass fails
    broken = WindowJob(detector, streams[0][0].events, 0, state)
    results = run_isolated([good[0], broken, good[1]])
    assert isinstance(results[1], RuntimeError | ValueError)
    assert np.array_equal(results[0][0], step_batch(good[:1])[0][0])
    assert np.array_equal(results[2][0], step_batch(good[1:])[0][0])


def _run_concurrently(batcher, jobs):
    async def main():
        try:
            return await asyncio.gather(*(batcher.step(job) for job in jobs))
        finally:
            batcher.close()

    return asyncio.run(main())


@pytest.mark.parametrize("max_batch, sizes", [(16, [10]), (4, [4, 4, 2]), (1, [1] * 10)])
def test_waiting_windows_run_as_batches_of_at_most_max_batch(model, max_batch, sizes):
    windows = [w for s in _streams(((W, H),) * 10, windows=1) for w in s]
    detector = StreamingDetector(model, conf_thres=0.0)
    jobs = [WindowJob(detector, w.events, w.t_start) for w in windows]
    batches = []
    with ThreadPoolExecutor(1) as executor:
        batcher = WindowBatcher(executor, 1, max_batch, lambda n, _: batches.append(n))
        results = _run_concurrently(batcher, jobs)
    assert batches == sizes
    _assert_same_results(results, [detector.step(job.events, job.t_start) for job in jobs])


def test_batcher_reports_a_failing_job_to_its_caller_only(model):
    window = _streams(((W, H),), windows=1)[0][0]
    detector = StreamingDetector(model, conf_thres=0.0)
    jobs = [WindowJob(detector, window.events, window.t_start), WindowJob(detector, window.events, 0, {"x": None})]

    async def main(batcher):
        try:
            return await asyncio.gather(*(batcher.step(job) for job in jobs), return_exceptions=True)
        finally:
            batcher.close()

    with ThreadPoolExecutor(1) as executor:
        ok, failed = asyncio.run(main(WindowBatcher(executor, 1, 8)))
    assert isinstance(failed, TypeError | ValueError) and len(ok) == 3  # boxes, state, firing rate


def test_batcher_rejects_bad_sizes():
    with ThreadPoolExecutor(1) as executor, pytest.raises(ValueError, match="positive"):
        WindowBatcher(executor, 1, 0)


def test_the_spike_meter_gives_each_stream_its_network_firing_rate(model):
    windows = [s[0] for s in _streams(((W, H), (W, H)), windows=1)]
    detector = StreamingDetector(model, conf_thres=0.0)
    jobs = [WindowJob(detector, w.events, w.t_start) for w in windows]
    meter = SpikeMeter()
    step_batch(jobs, meter)
    alone = []
    for job in jobs:
        single = SpikeMeter()
        step_batch([job], single)
        alone += single.rates()
    assert np.allclose(meter.rates(), alone)  # a batch counts each stream's own spikes
    spikes = []  # by hand: every LIF node's output of the first window
    with torch.inference_mode():
        x = torch.from_numpy(detector.counts(jobs[0].events, jobs[0].t_start)).unsqueeze(1)
        model(x, observe=lambda node, value: spikes.append(value) if node.kind == "lif" else None)
    assert len(spikes) == len(model.graph.state_names)
    expected = sum(float(s.sum()) for s in spikes) / sum(s.numel() for s in spikes)
    assert alone[0] == pytest.approx(expected, rel=1e-9) and 0 < alone[0] <= 1
    with pytest.raises(ValueError, match="no spiking layer"):
        SpikeMeter().rates()
