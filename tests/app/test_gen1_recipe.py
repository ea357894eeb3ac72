"""The Gen1 recipe (app/cfg/gen1.yaml): RVT's box filter, skipped recordings, sparse 4 Hz labels, one short epoch."""

import numpy as np
import pytest

from app.cli import main
from app.config import ConfigError, build_config
from data.formats.labels import read_labels, write_labels
from data.gen1 import list_recordings
from data.representation import StackedHistogram
from data.sequences import SequenceStreams
from tests.conftest import REPO

RECIPE = REPO / "app" / "cfg" / "gen1.yaml"
SMALL = ["input_width=80", "input_height=64", "scale=n", "batch=2", "seq_len=2", "workers=0", "warmup_steps=2",
         "val_recordings=1", "threads=2"]


@pytest.fixture(scope="module")
def sparse_dataset(tmp_path_factory):
    """Two train recordings and one val and test recording of 4 s with 4 Hz labels, as Gen1 has."""
    root = tmp_path_factory.mktemp("gen1like")
    assert main(["synth", str(root), "--recordings", "2", "--duration", "4", "--seed", "2", "--label-rate", "4",
                 "--quiet"]) == 0
    return root


def test_the_recipe_is_a_valid_config_with_rvts_filter():
    config = build_config(RECIPE, {"data": "/data/gen1"})
    assert (config["input_width"], config["input_height"]) == (304, 240)
    assert config["train_max_box_width"] == 0.9
    with pytest.raises(ConfigError, match="train_max_box_width"):
        build_config(RECIPE, {"train_max_box_width": 1.5})


def test_wide_boxes_are_dropped_and_recordings_left_empty_are_skipped(sparse_dataset, tmp_path):
    recordings = list_recordings(sparse_dataset, "train")
    histogram = StackedHistogram(bins=2, window_us=50_000, height=64, width=80)
    kept = SequenceStreams(recordings, histogram, 2, 2, max_box_width=0.9)
    assert not kept.skipped and len(kept.recordings) == 2
    # every box of the second recording made as wide as the sensor: RVT's filter removes them all
    labels = read_labels(recordings[1].labels)
    labels["x"], labels["w"] = 0, 300
    write_labels(recordings[1].labels, labels)
    try:
        streams = SequenceStreams(recordings, histogram, 2, 2, max_box_width=0.9)
        assert streams.skipped == [recordings[1].name] and len(streams.recordings) == 1
        assert len(SequenceStreams(recordings, histogram, 2, 2).recordings) == 2  # no filter: kept
        with pytest.raises(ValueError, match="no training recording has labels left"):
            SequenceStreams(recordings[1:], histogram, 2, 2, max_box_width=0.9)
    finally:
        assert main(["synth", str(tmp_path / "again"), "--recordings", "2", "--duration", "4", "--seed", "2",
                     "--label-rate", "4", "--quiet", "--splits", "train"]) == 0
        (tmp_path / "again" / "train" / recordings[1].labels.name).replace(recordings[1].labels)


def test_sparse_labels_leave_the_windows_between_label_times_unknown(sparse_dataset):
    histogram = StackedHistogram(bins=2, window_us=50_000, height=64, width=80)
    streams = SequenceStreams(list_recordings(sparse_dataset, "train"), histogram, 2, 2, max_box_width=0.9)
    labelled = np.concatenate([batch.labelled[batch.valid] for batch in streams.epoch(0)])
    # 4 label times per second against 20 windows per second: about one window in five is labelled
    assert 0.1 < labelled.mean() < 0.35


def test_one_short_epoch_with_the_recipe_then_evaluate(sparse_dataset, tmp_path, capsys):
    args = ["train", str(RECIPE), f"data={sparse_dataset}", "epochs=1", f"project={tmp_path}", "name=gen1", *SMALL]
    assert main([*args, "--quiet"]) == 0
    best = tmp_path / "gen1" / "weights" / "best.pt"
    capsys.readouterr()
    assert main(["eval", "--model", str(best), "--data", str(sparse_dataset), "--split", "test", "--json"]) == 0
    assert '"AP"' in capsys.readouterr().out
