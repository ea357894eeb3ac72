"""Channel gates (per-input channel masks): where they go, the integer decision, targets and loss, exact execution
in both integer runtimes, checkpoints, accounting, and the activity penalty."""

import numpy as np
import pytest
import torch

from models.compress.accounting import FlopsCounter
from models.inference.export import export_model, fold, read_spq
from models.inference.numpy_runtime import NumpyRuntime
from models.inference.onnx_step import export_onnx
from models.inference.runtime import Runtime
from models.inference.spq import ExportFormatError
from models.networks.checkpoint import load_detector, save_checkpoint
from models.networks.detector import DetectorConfig, build_detector, with_channel_gates
from models.networks.gates import ChannelGate, gates, target_mask
from models.networks.sparsity import ActivityPenalty, GateLoss
from tests.models.test_prune import _masked_then_pruned
from tests.models.test_runtime import (
    TINY,
    _calibrated,
    _input,
    assert_same_output,
    assert_same_state,
    float64_reference,
)


def _gated(seed: int = 3) -> torch.nn.Module:
    """A calibrated tiny detector whose gates (random predictors) drop some channels and keep others."""
    model = _calibrated(DetectorConfig(**TINY, channel_gates=True))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in gates(model):
            gate.weight.normal_(0, 1, generator=g)
            gate.bias.normal_(0, 0.3, generator=g)
    return model


def test_gates_go_on_the_convs_one_lif_alone_reads():
    model = build_detector(DetectorConfig(**TINY, channel_gates=True))
    graph = model.graph
    names = [n.name for n in graph.of_kind("gated_conv")]
    assert names == ["backbone.stem1.conv_bn", "backbone.stem2", "backbone.stages.0.0.conv1",
                     "backbone.stages.1.0.conv1", "backbone.stages.2.0.conv1"]
    for name in names:
        assert [r.kind for r in graph.readers(name)] == ["lif"]
    # the currents of residual joins and the FPN stay ungated
    assert all(n.kind == "conv" for n in graph.nodes if n.name.endswith(("conv2", "shortcut")) or "lateral" in n.name)
    assert not build_detector(DetectorConfig(**TINY)).graph.of_kind("gated_conv")


def test_fresh_gates_keep_every_channel_so_adding_them_changes_nothing():
    model = _calibrated(DetectorConfig(**TINY))
    gated = with_channel_gates(model).eval()
    x = _input(model.config, 5, batch=2)
    with torch.no_grad():
        y_a, state_a = model(x)
        y_b, state_b = gated(x)
    assert torch.equal(y_a, y_b)
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_the_decision_is_the_sign_of_the_fake_quant_logit_and_the_runtimes_integer():
    torch.manual_seed(0)
    gate = ChannelGate(16, 24)
    with torch.no_grad():
        gate.weight.normal_(0, 1)
        gate.bias.normal_(0, 0.2)
    x = (torch.rand(3, 4, 16, 8, 10) < 0.2).float()  # spikes [T, B, Cin, H, W]
    keep, logits = gate(x)
    w, b, scale = gate.codes()
    exact = (x.double().sum((0, 3, 4)) @ w.double().T + b.double() * 3 * 8 * 10) * scale.double() / (3 * 8 * 10)
    assert torch.equal(keep.bool(), exact > 0)
    assert torch.equal(keep.bool()[exact.abs() > 1e-5], (logits > 0)[exact.abs() > 1e-5])
    assert 0 < keep.mean() < 1


def test_the_straight_through_gradient_reaches_only_the_predictor():
    gate = ChannelGate(4, 6)
    x = torch.rand(2, 3, 4, 5, 5, requires_grad=True)
    keep, _ = gate(x)
    keep.sum().backward()
    assert x.grad is None and gate.weight.grad.abs().sum() > 0 and gate.bias.grad.abs().sum() > 0


def test_targets_keep_the_channels_holding_the_mass():
    current = torch.zeros(2, 1, 5, 3, 3)  # [T, B, C, h, w]
    for c, share in enumerate((0.5, 0.3, 0.15, 0.05, 0.0)):
        current[0, 0, c, 0, 0] = share
    current[1, 0, 4] = -1.0  # negative current is no mass
    assert target_mask(current, 0.85).tolist() == [[1, 1, 1, 0, 0]]
    assert target_mask(current, 0.45).tolist() == [[1, 0, 0, 0, 0]]
    assert target_mask(current, 1.0).tolist() == [[1, 1, 1, 1, 0]]


def _train_gates(model, loss, steps):
    """``steps`` Adam steps of the gates alone on one input under ``loss``: each step's loss parts."""
    optimizer = torch.optim.Adam([p for g in gates(model) for p in g.parameters()], lr=0.05)
    model.train()
    x = _input(model.config, 1, batch=2)
    history = []
    for _ in range(steps):
        model(x)
        total, parts = loss()
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(parts.tolist())
    return history


def test_the_gate_loss_teaches_the_predictors_the_targets():
    model = _gated()
    bce = [parts[0] for parts in _train_gates(model, GateLoss(model, mass=0.85, gain=1.0, budget=1.0), 30)]
    assert bce[-1] < 0.7 * bce[0]
    assert all(not g.records for g in gates(model))


def test_the_budget_term_pushes_the_kept_share_down():
    model = _gated()
    kept = [parts[2] for parts in _train_gates(model, GateLoss(model, gain=0.0, budget=0.2, budget_gain=10.0), 20)]
    assert kept[-1] < kept[0] and kept[-1] <= 0.3


def test_gated_runtimes_equal_the_float64_fake_quant_model_and_each_other():
    model = _gated()
    fast, reference_ops = Runtime.from_model(model), Runtime.from_model(model, backend="reference")
    engine = NumpyRuntime(*fold(model))
    reference = float64_reference(model)
    kept = []
    handles = [g.register_forward_hook(lambda m, a, out: kept.append(float(out[0].mean()))) for g in gates(model)]
    states = [None] * 4
    with torch.no_grad():
        for seed in range(4):
            x = _input(model.config, 10 + seed, batch=2)
            if seed == 1:  # sparse like events: the event-driven first conv, over gathered weights
                x *= torch.rand(x.shape, generator=torch.Generator().manual_seed(seed)) < 0.02
            y_a, states[0] = reference(x, states[0])
            y_b, states[1] = reference_ops(x, states[1])
            y_c, states[2] = fast(x, states[2])
            np.testing.assert_allclose(y_c.numpy(), y_b.numpy(), rtol=1e-5, atol=1e-3)  # the fused head
            y_d, states[3] = engine(x.numpy(), states[3])
            assert_same_state(states[0], states[1])
            assert_same_state(states[0], states[2])
            assert all(np.array_equal(states[1][k].numpy(), states[3][k]) for k in states[1])
            assert_same_output(y_a, y_b)
            np.testing.assert_allclose(y_d, y_b.numpy(), rtol=1e-5, atol=1e-3)
    for handle in handles:
        handle.remove()
    assert 0.2 < np.mean(kept) < 0.9  # the gates really dropped channels


def test_dropped_channels_get_exactly_zero_current_in_the_runtime():
    model = _gated()
    runtime = Runtime.from_model(model, backend="reference")
    seen = {}
    x = _input(model.config, 2, batch=2)
    with torch.no_grad():
        runtime(x, observe=lambda node, value: seen.update({node.name: value}))
    current = seen["backbone.stages.0.0.conv1"]  # [T, B, C, h, w] int64
    silent = current.abs().sum((0, 3, 4)) == 0  # [B, C]
    assert silent.any() and not silent.all()


def test_checkpoints_and_spq_files_round_trip_the_gates(tmp_path):
    model = _gated()
    path = save_checkpoint(tmp_path / "g.pt", model)
    loaded = load_detector(path)
    assert loaded.config.channel_gates
    for a, b in zip(gates(model), gates(loaded), strict=True):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    meta, tensors = read_spq(export_model(loaded, tmp_path / "g.spq"))
    kinds = {n["name"]: n["kind"] for n in meta["graph"]}
    assert kinds["backbone.stages.0.0.conv1"] == "gated_conv"
    code = tensors["backbone.stages.0.0.conv1.gate.weight"]
    assert code.dtype == np.int8 and np.abs(code).max() <= 127
    lif = next(n for n in meta["graph"] if n["name"] == "backbone.stages.0.0.lif2")
    assert lif["attrs"]["input"] == "gated"


def test_executed_flops_count_only_the_kept_channels_plus_the_predictor():
    model = _gated()
    x = _input(model.config, 4, batch=2)
    masks = {}

    def remember(i: int):
        def hook(module, args, out) -> None:
            masks[i] = out[0]
        return hook

    handles = [g.register_forward_hook(remember(i)) for i, g in enumerate(gates(model))]
    with FlopsCounter(model) as counter, torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    layers = {c.name: c for c in counter.layers()}
    gated = [c for c in layers.values() if c.gated]
    assert len(gated) == 5
    for i, count in enumerate(gated):
        assert count.kept_fraction == pytest.approx(float(masks[i].mean()))
        assert count.predictor > 0
        assert count.executed == pytest.approx(count.flops * count.kept_fraction + count.predictor)
    assert sum(c.executed for c in gated) < sum(c.flops for c in gated)


def test_the_activity_penalty_lowers_the_firing_rate():
    torch.manual_seed(0)
    model = _calibrated(DetectorConfig(**TINY)).train()
    penalty = ActivityPenalty(model, gain=1.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x = _input(model.config, 1, batch=2)
    rates = []
    for _ in range(15):
        model(x)
        total, rate = penalty()
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        rates.append(float(rate))
    penalty.remove()
    assert rates[-1] < 0.5 * rates[0]


def test_static_pruning_slices_the_gates_and_equals_the_masked_model():
    model = _gated()
    x0, x1 = _input(model.config, 5, batch=2), _input(model.config, 6, batch=2)
    masked, _, _, pruned = _masked_then_pruned(model, x0, x1)
    assert pruned.config.channel_gates and pruned.config.pruned
    for node in pruned.graph.of_kind("gated_conv"):
        conv, gate = node.module.conv, node.module.gate
        assert gate.weight.shape == (conv.out_channels, conv.in_channels)
    with torch.no_grad():
        _, state = pruned(x0)
        out, _ = pruned(x1, state)
    assert torch.allclose(out, masked, atol=1e-4)


def test_a_batch_of_gated_streams_equals_each_stream_alone():
    model = _gated()
    engines = {"numpy": NumpyRuntime(*fold(model)), "torch": Runtime.from_model(model)}
    for name, engine in engines.items():
        batch_state, alone = None, [None, None]
        with torch.no_grad():
            for seed in range(3):
                x = _input(model.config, 20 + seed, batch=2)
                x = x.numpy() if name == "numpy" else x
                _, batch_state = engine(x, batch_state)
                for i in range(2):
                    _, alone[i] = engine(x[:, i:i + 1], alone[i])
        for key, codes in batch_state.items():
            for i in range(2):
                assert (codes[i:i + 1] == alone[i][key]).all(), (name, key, i)


def test_onnx_export_refuses_a_gated_model_before_writing(tmp_path):
    path = tmp_path / "g.onnx"
    with pytest.raises(ExportFormatError, match="channel gates"):
        export_onnx(Runtime.from_model(_gated()), path)
    assert not path.exists()
