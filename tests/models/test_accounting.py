"""FLOPs, SynOps and memory accounting: counts by hand, exact gating, packed sizes, report keys."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from models.compress.accounting import (
    FlopsCounter,
    _active_positions,
    memory,
    model_report,
    static_counts,
    weight_bytes,
)
from models.networks.detector import DetectorConfig, build_detector
from tests.helpers import SAMPLE, TINY

REPORT_KEYS = {"params", "weight_bytes", "state_bytes", "fp32_weight_bytes", "fp32_state_bytes", "flops_dense",
               "flops_effective", "flops_reduction", "memory_reduction", "synops", "layers", "channels"}


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
    active = _active_positions(x, conv, out.shape[2:], tile)
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
