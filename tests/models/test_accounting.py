"""FLOPs, SynOps and memory accounting: counts by hand, exact gating, packed sizes, report keys, and the invariants of
the honest headline (executed FLOPs, packed memory with the head at its bits, the shipped file)."""

import dataclasses
import math
import os

import pytest
import torch
import torch.nn.functional as F

from models.compress.accounting import (
    FlopsCounter,
    active_positions,
    dense_reference,
    deployed_sizes,
    memory,
    model_report,
    static_counts,
    weight_bytes,
)
from models.inference.export import export_model
from models.networks.detector import DetectorConfig, build_detector
from models.networks.quant import QuantConv2d
from tests.helpers import SAMPLE, TINY

REPORT_KEYS = {"params", "weight_bytes", "state_bytes", "fp32_weight_bytes", "fp32_state_bytes", "flops_dense",
               "flops_pruned", "flops_executed", "flops_effective", "flops_reduction", "flops_reduction_event_driven",
               "flops_reduction_channels", "memory_bytes", "fp32_memory_bytes", "memory_reduction", "shipped_bytes",
               "shipped_header_bytes", "memory_reduction_shipped", "resident_model_bytes",
               "resident_state_bytes_per_stream", "export_error", "accounting", "synops", "layers", "channels"}


def test_dense_counts_follow_the_formula():
    cfg = DetectorConfig(**TINY)
    counts = {c.name: c for c in static_counts(build_detector(cfg))}
    # stem1: 2 → 8 channels, 3×3, stride 2 on 64×96 → 32×48 outputs, every time step
    assert counts["backbone.stem1.conv_bn.conv"].flops == cfg.bins * 32 * 48 * 8 * 2 * 9
    # its membrane: one update per neuron and step
    assert counts["backbone.stem1.lif"].flops == cfg.bins * 8 * 32 * 48
    # the head runs once per window: box branch's first conv at P3 (8×12), 32 → 64, 3×3
    assert counts["head.cv2.0.0.conv"].flops == 8 * 12 * 64 * 32 * 9
    # a depthwise conv costs k² per output
    assert counts["head.cv3.0.0.0.conv"].flops == 8 * 12 * 32 * 9


def test_an_empty_window_skips_the_first_conv_entirely():
    cfg = DetectorConfig(**TINY)
    counts = {c.name: c for c in static_counts(build_detector(cfg))}
    first = counts["backbone.stem1.conv_bn.conv"]
    assert first.effective == 0 and first.synops == 0 and first.active_fraction == 0


@pytest.mark.parametrize("tile", [1, 2, 3])
def test_gating_marks_exactly_the_outputs_a_nonzero_input_reaches(tile):
    conv = torch.nn.Conv2d(4, 5, 3, stride=2, padding=1, bias=False)
    x = torch.zeros(2, 4, 11, 13)
    x[0, 1, 3, 4] = 1
    x[1, 3, 10, 12] = 2
    out = conv(x)
    active = active_positions(x, conv, out.shape[2:], tile)
    reach = F.conv2d(x.abs().sum(1, keepdim=True), torch.ones(1, 1, 3, 3), stride=2, padding=1)[:, 0] > 0
    assert active.shape == reach.shape
    assert bool((active[reach] == 1).all())  # no output that sees an input is skipped
    assert torch.equal(out[(~active.bool()).unsqueeze(1).expand_as(out)], torch.zeros(int((active == 0).sum()) * 5))
    if tile == 1:
        assert torch.equal(active.bool(), reach)


def test_counter_counts_synops_and_membranes():
    conv_cfg = DetectorConfig(**TINY)
    model = build_detector(conv_cfg).eval()
    h, w = conv_cfg.padded_size
    x = torch.zeros(conv_cfg.bins, 1, 2, h, w, dtype=torch.uint8)
    x[0, 0, 0, 11, 11] = 3  # one event at an odd position: in the 3×3 stride-2 fields of 2 × 2 outputs
    with FlopsCounter(model) as counter, torch.no_grad():
        model(x)
    stem = {c.name: c for c in counter.layers()}["backbone.stem1.conv_bn.conv"]
    assert counter.windows == 1
    assert stem.synops == 4 * 8  # 4 outputs × 8 channels
    assert stem.effective == 4 * 8 * 2 * 9
    assert all(module.probe is None for module in model.modules() if hasattr(module, "probe"))


def test_memory_packs_weights_and_ternary_states():
    cfg = DetectorConfig(**TINY)
    model = build_detector(cfg)
    mem = memory(model)
    neurons = mem["state_neurons"]
    assert mem["fp32_state_bytes"] == 4 * neurons and mem["state_bytes_int8"] == neurons
    assert neurons / 4 <= mem["state_bytes"] <= neurons / 4 + 20  # 2 bits per ternary neuron, per tensor rounded up
    assert mem["weight_bytes"] < mem["fp32_weight_bytes"]
    baseline = memory(build_detector(dataclasses.replace(cfg, variant="baseline")))
    assert baseline["weight_bytes"] == baseline["fp32_weight_bytes"] and baseline["state_bytes"] == 4 * neurons
    head4 = build_detector(dataclasses.replace(cfg, head_bits=4))
    head_params = sum(p.numel() for p in model.head.parameters() if p.requires_grad and p.dim() == 4)
    assert weight_bytes(model) - weight_bytes(head4) >= math.floor(head_params * 3.5) - 1000


def test_report_keys_and_reductions():
    cfg = DetectorConfig(**TINY)
    model = build_detector(cfg).eval()
    report = model_report(model, [SAMPLE], max_windows=4, tile=2)
    assert set(report) >= REPORT_KEYS
    assert report["windows"] == 4 and report["flops_dense"] >= report["flops_pruned"] >= report["flops_effective"]
    assert report["flops_reduction"] >= 1 and report["memory_reduction"] > 1
    rows = {row["name"]: row for row in report["layers"]}
    assert 0 <= rows["backbone.stem1.lif"]["firing_rate"] <= 1
    narrow = build_detector(dataclasses.replace(cfg, channels={"stage2": 64, "neck": 16})).eval()
    smaller = model_report(narrow, [SAMPLE], max_windows=4)
    assert smaller["flops_dense"] == report["flops_dense"] and smaller["flops_pruned"] < report["flops_pruned"]
    assert smaller["params"] < report["params"] == report["params_dense"] + 13  # + 13 learnable thresholds
    assert smaller["channels"]["neck"] == [16, 32]


@pytest.fixture(scope="module")
def quantized_report():
    return model_report(build_detector(DetectorConfig(**TINY)).eval(), [SAMPLE], max_windows=3, tile=2)


def test_executed_flops_count_every_position_of_the_kept_channels(quantized_report):
    report = quantized_report
    rows = report["layers"]
    convs, membranes = [r for r in rows if r["kind"] == "conv"], [r for r in rows if r["kind"] == "membrane"]
    assert all(r["flops_executed"] == r["flops"] >= r["flops_effective"] for r in convs)  # no position skipped
    assert all(r["flops_executed"] == r["flops_effective"] <= r["flops"] for r in membranes)  # non-zero states
    assert report["flops_executed"] == pytest.approx(sum(r["flops_executed"] for r in rows))
    assert report["flops_effective"] <= report["flops_executed"] <= report["flops_pruned"] <= report["flops_dense"]
    assert report["flops_reduction"] == pytest.approx(report["flops_dense"] / report["flops_executed"])
    assert report["flops_reduction_event_driven"] >= report["flops_reduction"] >= 1
    assert report["head_flops_executed"] == sum(r["flops"] for r in convs if r["name"].startswith("head."))


def test_the_dense_fp32_model_is_its_own_reference():
    cfg = DetectorConfig(**TINY)
    report = model_report(dense_reference(cfg).eval(), [SAMPLE], max_windows=3)
    assert report["memory_reduction"] == 1.0 and report["weight_bytes"] == report["fp32_weight_bytes"]
    conv_executed = sum(r["flops_executed"] for r in report["layers"] if r["kind"] == "conv")
    conv_dense = sum(r["flops_dense"] for r in report["layers"] if r["kind"] == "conv")
    assert conv_executed == conv_dense  # only membranes at rest (state 0) are not counted, as the paper counts them
    membrane_share = 1 - conv_dense / report["flops_dense"]
    assert 1.0 <= report["flops_reduction"] <= 1 / (1 - membrane_share) and report["flops_reduction"] == (
        pytest.approx(1.0, abs=0.01))
    assert report["shipped_bytes"] is None and report["memory_reduction_shipped"] is None
    assert "quantized" in report["export_error"]


def test_memory_counts_the_detect_head_at_its_bits():
    cfg = DetectorConfig(**TINY)
    float_head, head4 = build_detector(cfg), build_detector(dataclasses.replace(cfg, head_bits=4))
    convs = [m for m in head4.head.modules() if isinstance(m, QuantConv2d)]
    assert convs and all(m.quant.weight_bits == 4 for m in convs)
    saved = sum(4 * m.weight.numel() - math.ceil(m.weight.numel() * 4 / 8) for m in convs)
    assert weight_bytes(float_head) - weight_bytes(head4) == saved
    assert memory(head4)["weight_bytes"] == memory(float_head)["weight_bytes"] - saved
    assert memory(head4)["fp32_weight_bytes"] == memory(float_head)["fp32_weight_bytes"]  # the same reference


def test_shipped_bytes_are_the_exported_file_size(quantized_report, tmp_path):
    model = build_detector(DetectorConfig(**TINY)).eval()
    path = export_model(model, tmp_path / "m.spq")
    sizes = deployed_sizes(path)
    assert sizes["shipped_bytes"] == os.path.getsize(path) == quantized_report["shipped_bytes"]
    assert 0 < sizes["shipped_header_bytes"] < sizes["shipped_bytes"]
    report = quantized_report
    assert report["export_error"] is None
    assert report["memory_reduction_shipped"] == pytest.approx(
        report["fp32_memory_bytes"] / (report["shipped_bytes"] + report["state_bytes"]))
    # the runtime holds its state as int8 codes, one byte per neuron; its weights unpacked (float32 GEMM operands)
    assert report["resident_state_bytes_per_stream"] == report["state_bytes_int8"] == report["state_neurons"]
    assert report["resident_model_bytes"] > report["shipped_bytes"]
