"""Energy in the accounting and in ``spquant report``: keys, per-layer rule, totals, the FP32 dense reference, the
plot only on request."""

import dataclasses
import json

import pytest
import torch

from app.cli import main
from models.compress.accounting import E_AC_PJ, E_MAC_PJ, FlopsCounter, model_report
from models.inference.loading import load_model
from models.networks.checkpoint import save_checkpoint
from models.networks.detector import DetectorConfig, build_detector
from tests.helpers import REPO, SAMPLE, TINY


@pytest.fixture(scope="module")
def reports():
    cfg = DetectorConfig(**TINY)
    full = model_report(build_detector(cfg).eval(), [SAMPLE], max_windows=3)
    narrow = build_detector(dataclasses.replace(cfg, channels={"stage2": 32, "neck": 16})).eval()
    return full, model_report(narrow, [SAMPLE], max_windows=3)


def test_energy_keys_and_total_is_the_sum_of_the_layers(reports):
    for report in reports:
        assert {"energy_uj_per_window", "energy_uj_per_window_fp32_dense", "energy_reduction",
                "energy_uj_per_window_int", "energy_constants"} <= set(report)
        rows = report["layers"]
        assert all({"energy_uj", "energy_op", "energy_ops"} <= set(row) for row in rows)
        assert report["energy_uj_per_window"] == pytest.approx(sum(row["energy_uj"] for row in rows), rel=1e-12)
        assert report["energy_reduction"] == pytest.approx(
            report["energy_uj_per_window_fp32_dense"] / report["energy_uj_per_window"])
        constants = report["energy_constants"]
        assert (constants["e_mac_pj"], constants["e_ac_pj"]) == (4.6, 0.9) and "Horowitz" in constants["source"]
        assert 0 < report["energy_uj_per_window_int"] < report["energy_uj_per_window"]


def test_spike_convs_cost_synops_and_the_rest_macs(reports):
    rows = {row["name"]: row for row in reports[0]["layers"]}
    first, second = rows["backbone.stem1.conv_bn.conv"], rows["backbone.stem2.conv"]
    assert first["energy_op"] == "MAC" and first["energy_ops"] == first["flops_effective"]  # reads event counts
    assert first["energy_uj"] == pytest.approx(first["flops_effective"] * E_MAC_PJ * 1e-6)
    assert second["energy_op"] == "AC" and second["energy_uj"] == pytest.approx(second["synops"] * E_AC_PJ * 1e-6)
    head = [row for name, row in rows.items() if name.startswith("head.")]
    assert head and all(row["energy_op"] == "MAC" for row in head)  # reads firing rates
    assert all(row["energy_op"] == "none" and row["energy_uj"] == 0 for row in rows.values()
               if row["kind"] == "membrane")


def test_the_dense_fp32_reference_costs_more_than_the_pruned_model(reports):
    full, narrow = reports
    assert full["energy_uj_per_window_fp32_dense"] == narrow["energy_uj_per_window_fp32_dense"]  # same reference
    assert narrow["energy_uj_per_window_fp32_dense"] > narrow["energy_uj_per_window"]
    assert narrow["energy_reduction"] > 1


def test_the_bundled_pruned_model_costs_less_than_its_dense_fp32_reference():
    model = load_model(REPO / "models" / "weights" / "spquant-n-pruned.pt")
    report = model_report(model, [SAMPLE], max_windows=2)
    assert report["model"]["pruned"] and report["energy_reduction"] > 1
    assert report["energy_uj_per_window_fp32_dense"] > report["energy_uj_per_window"] > 0
    rows = {row["name"]: row for row in report["layers"]}
    assert any(row["energy_op"] == "AC" and row["energy_uj"] > 0 for row in rows.values())  # it spikes
    assert sum(row["energy_uj"] for name, row in rows.items() if name.startswith("head.")) > 0  # rates are read


def test_silence_costs_nothing_in_the_spiking_layers():
    model = build_detector(DetectorConfig(**TINY)).eval()
    h, w = model.config.padded_size
    with FlopsCounter(model) as counter, torch.no_grad():
        model(torch.zeros(model.config.bins, 1, 2, h, w, dtype=torch.uint8))
    spiking = [c for c in counter.layers() if c.kind == "conv" and c.spiking]
    assert spiking and all(c.energy_pj() == 0 for c in spiking)


@pytest.fixture(scope="module")
def tiny_pt(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("m") / "tiny.pt", build_detector(DetectorConfig(**TINY)).eval())


def test_report_prints_energy_and_writes_no_plot_unless_asked(tiny_pt, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--model", str(tiny_pt), "--windows", "2"]) == 0
    text = capsys.readouterr().out
    assert "energy / window" in text and "Horowitz" in text and "int8 add 0.03" in text and "plot:" not in text
    assert main(["report", "--model", str(tiny_pt), "--windows", "2", "--plot", "none", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "plot" not in report and report["energy_uj_per_window"] > 0
    assert list(tmp_path.iterdir()) == []  # no report.png in the working directory
    assert main(["report", "--model", str(tiny_pt), "--windows", "2", "--plot", "out/r.png", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plot"] == "out/r.png" and (tmp_path / "out" / "r.png").stat().st_size
