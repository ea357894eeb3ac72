"""Batches built in DataLoader worker processes arrive in the epoch's order and equal the in-process ones."""

from __future__ import annotations

import numpy as np
import pytest

from data.augment import Augmentation
from data.gen1 import list_recordings
from data.loader import epoch_batches
from data.representation import StackedHistogram
from data.sequences import SequenceStreams
from data.synthetic.dataset import write_dataset
from data.synthetic.presets import difficulty_config


@pytest.fixture(scope="module")
def streams(tmp_path_factory) -> SequenceStreams:
    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, difficulty_config("normal"), recordings=2, duration_s=0.6, seed=2, splits=("train",),
                  progress=False)
    histogram = StackedHistogram(bins=2, window_us=50_000, height=64, width=80)
    return SequenceStreams(list_recordings(root, "train"), histogram, batch_size=3, seq_len=2,
                           augmentation=Augmentation(0.5, 0.5, 1.5), seed=1)


def _same(a, b) -> None:
    for name in ("inputs", "labelled", "reset", "valid"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for row_a, row_b in zip(a.boxes, b.boxes, strict=True):
        for boxes_a, boxes_b in zip(row_a, row_b, strict=True):
            np.testing.assert_array_equal(boxes_a, boxes_b)


@pytest.mark.parametrize("workers", [1, 2])
def test_worker_batches_equal_in_process_batches_in_order(streams, workers):
    want = list(streams.epoch(1))
    got = list(epoch_batches(streams, 1, workers=workers))
    assert len(got) == len(want) == len(streams) > 2
    for a, b in zip(got, want, strict=True):
        _same(a, b)
    assert got[0].reset[0].all()  # every stream starts fresh


def test_shards_partition_the_epoch(streams):
    shards = [list(streams.epoch(0, shard, 2)) for shard in (0, 1)]
    merged = [b for pair in zip(*shards, strict=False) for b in pair] + shards[0][len(shards[1]):]
    for a, b in zip(merged, streams.epoch(0), strict=True):
        _same(a, b)
    with pytest.raises(ValueError, match="shard"):
        next(streams.epoch(0, 2, 2))
    with pytest.raises(ValueError, match="workers"):
        next(epoch_batches(streams, 0, workers=-1))
