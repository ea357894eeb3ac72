"""``spquant predict --denoise-us N``: the background-activity filter in front of the detector."""

from __future__ import annotations

import numpy as np

from app.cli import main
from data.formats.labels import read_labels
from tests.helpers import SAMPLE


def _predict(tmp_path, capsys, source, *options: str) -> tuple[np.ndarray, str]:
    out = tmp_path / "dets.npy"
    assert main(["predict", str(source), "--out", str(out), *options]) == 0
    return read_labels(out), capsys.readouterr().out


def test_denoise_filters_the_sample_and_says_how_much(tmp_path, capsys):
    plain, said = _predict(tmp_path, capsys, SAMPLE)
    assert "µs: kept" not in said
    off, _ = _predict(tmp_path, capsys, SAMPLE, "--denoise-us", "0")
    np.testing.assert_array_equal(off, plain)
    denoised, said = _predict(tmp_path, capsys, SAMPLE, "--denoise-us", "10000")
    kept, seen = (int(word) for word in said.split("kept ")[1].split(" events")[0].split(" of "))
    assert "60 windows" in said and "denoise 10000 µs" in said and 0 < kept < seen
    assert len(denoised) and not np.array_equal(denoised, plain)


def test_a_negative_filter_time_is_a_clear_error(tmp_path, capsys):
    assert main(["predict", str(SAMPLE), "--out", str(tmp_path / "d.npy"), "--denoise-us", "-5"]) == 2
    assert "--denoise-us must be >= 0" in capsys.readouterr().err


def test_denoise_on_a_real_camera_recording(real_file, tmp_path, capsys):
    denoised, said = _predict(tmp_path, capsys, real_file("sparklers.raw"), "--denoise-us", "5000")
    assert "3 windows" in said and "denoise 5000 µs" in said
    assert (denoised["x"] >= 0).all() and (denoised["x"] + denoised["w"] <= 640.5).all()  # boxes on the VGA sensor
