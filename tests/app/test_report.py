"""``spquant report``: the JSON keys of the honest accounting, the text lines that name what each figure counts, and
a clear refusal of an exported model."""

import dataclasses
import json

import pytest

from app.cli import main
from models.inference.export import export_model
from models.networks.checkpoint import load_detector, save_checkpoint
from models.networks.detector import DetectorConfig, build_detector
from tests.helpers import TINY

KEYS = {"flops_dense", "flops_pruned", "flops_executed", "flops_effective", "flops_reduction",
        "flops_reduction_event_driven", "flops_reduction_channels", "head_flops_executed", "weight_bytes",
        "state_bytes", "memory_bytes", "fp32_memory_bytes", "memory_reduction", "shipped_bytes", "shipped_header_bytes",
        "memory_reduction_shipped", "resident_model_bytes", "resident_state_bytes_per_stream", "export_error",
        "accounting", "energy_uj_per_window", "layers", "channels", "model"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("m")
    cfg = DetectorConfig(**TINY, head_bits=4)
    return {
        "spquant": save_checkpoint(folder / "tiny.pt", build_detector(cfg).eval()),
        "baseline": save_checkpoint(folder / "baseline.pt", build_detector(
            dataclasses.replace(cfg, variant="baseline", head_bits=32)).eval()),
    }


def test_json_has_the_executed_event_driven_shipped_and_resident_figures(checkpoints, capsys):
    assert main(["report", "--model", str(checkpoints["spquant"]), "--windows", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) >= KEYS
    assert report["flops_reduction_event_driven"] >= report["flops_reduction"] >= 1
    assert report["shipped_bytes"] > report["shipped_header_bytes"] > 0 and report["export_error"] is None
    assert report["model"]["head_bits"] == 4
    assert {"flops_reduction", "flops_reduction_event_driven", "memory_reduction", "memory_reduction_shipped"} <= set(
        report["accounting"])
    assert all("flops_executed" in row for row in report["layers"])


def test_text_names_what_each_figure_counts(checkpoints, capsys):
    assert main(["report", "--model", str(checkpoints["spquant"]), "--windows", "2"]) == 0
    text = capsys.readouterr().out
    assert "executed:" in text and "event-driven" in text and "ceiling" in text
    assert "shipped .spq" in text and "resident" in text and "head 4-bit" in text
    assert main(["report", "--model", str(checkpoints["baseline"]), "--windows", "2"]) == 0
    assert "no integer export" in capsys.readouterr().out


def test_the_plot_shows_flops_and_memory(checkpoints, tmp_path, capsys):
    plot = tmp_path / "r.png"
    assert main(["report", "--model", str(checkpoints["spquant"]), "--windows", "2", "--json", "--plot",
                 str(plot)]) == 0
    assert json.loads(capsys.readouterr().out)["plot"] == str(plot) and plot.stat().st_size > 10_000


def test_an_exported_model_is_refused_with_a_hint(checkpoints, tmp_path, capsys):
    spq = export_model(load_detector(checkpoints["spquant"]), tmp_path / "m.spq")
    assert main(["report", "--model", str(spq), "--windows", "2"]) == 2
    assert "give the checkpoint" in capsys.readouterr().err
