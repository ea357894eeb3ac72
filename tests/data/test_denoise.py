"""The streaming background-activity filter keeps exactly what tonic's ``denoise_numpy`` keeps from the whole
recording, for any chunking."""

from __future__ import annotations

import numpy as np
import pytest
import tonic.functional

from data.denoise import BackgroundActivityFilter
from data.errors import EventValidationError
from data.events import concat_events, empty_events
from data.formats.dat import DatRecording
from data.formats.recording import open_recording
from tests.helpers import SAMPLE, random_events


def _in_random_chunks(events: np.ndarray, denoiser: BackgroundActivityFilter, rng: np.random.Generator) -> np.ndarray:
    cuts = np.sort(rng.integers(0, len(events) + 1, int(rng.integers(0, 12))))  # repeated cuts: empty chunks
    return concat_events([denoiser(chunk) for chunk in np.split(events, cuts)])


@pytest.mark.parametrize("seed", range(40))
def test_chunked_stream_equals_tonic_on_the_whole_recording(seed):
    rng = np.random.default_rng(seed)
    width, height = int(rng.integers(1, 12)), int(rng.integers(1, 10))
    events = random_events(int(rng.integers(1, 600)), t_max=int(rng.integers(1_000, 300_000)), width=width,
                           height=height, seed=seed)
    filter_time = int(rng.integers(1, 30_000))
    want = tonic.functional.denoise_numpy(events, filter_time)
    # a sensor larger than the events' extent (tonic sizes its memory by the largest coordinate seen)
    denoiser = BackgroundActivityFilter(width + int(rng.integers(0, 3)), height + int(rng.integers(0, 3)), filter_time)
    got = _in_random_chunks(events, denoiser, rng)
    np.testing.assert_array_equal(got, want)
    assert (denoiser.events_in, denoiser.events_out) == (len(events), len(want))


def test_sample_recording_in_random_chunks_equals_tonic():
    recording = DatRecording(SAMPLE)
    events = recording.read(0, 600_000)
    want = tonic.functional.denoise_numpy(events, 5_000)
    got = _in_random_chunks(events, BackgroundActivityFilter(recording.width, recording.height, 5_000),
                            np.random.default_rng(1))
    assert 0 < len(want) < len(events)  # the test filters something and keeps something
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["sample_ncars.dat", "sparklers.raw"])
def test_real_recordings_equal_tonic(real_file, name):
    recording = open_recording(real_file(name), 304, 240) if name.endswith(".dat") else open_recording(real_file(name))
    events = recording.read()[:60_000]
    want = tonic.functional.denoise_numpy(events, 10_000)
    got = _in_random_chunks(events, BackgroundActivityFilter(recording.width, recording.height, 10_000),
                            np.random.default_rng(2))
    np.testing.assert_array_equal(got, want)


def test_isolated_events_go_and_neighbours_stay():
    events = random_events(0)
    denoiser = BackgroundActivityFilter(10, 10, 1_000)
    assert len(denoiser(events)) == 0
    first = concat_events([random_events(1, t_min=5_000, t_max=5_001, width=1, height=1)])  # (0, 0) at 5 ms
    assert len(denoiser(first)) == 0  # no neighbour was active in the millisecond before
    neighbour = first.copy()
    neighbour["x"], neighbour["t"] = 1, 5_500
    assert len(denoiser(neighbour)) == 1  # (0, 0) fired 0.5 ms earlier, in an earlier chunk
    late = neighbour.copy()
    late["x"], late["t"] = 0, 7_000
    assert len(denoiser(late)) == 0  # (1, 0) fired 1.5 ms earlier: too long ago


def test_bad_arguments_and_events_off_the_sensor_are_rejected():
    with pytest.raises(ValueError, match="filter_time"):
        BackgroundActivityFilter(10, 10, 0)
    with pytest.raises(ValueError, match="sensor size"):
        BackgroundActivityFilter(0, 10, 1_000)
    with pytest.raises(EventValidationError, match="outside a sensor of 10x10"):
        BackgroundActivityFilter(10, 10, 1_000)(random_events(5, width=20, height=20))
    assert len(BackgroundActivityFilter(10, 10, 1_000)(empty_events())) == 0
