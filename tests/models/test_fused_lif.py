"""The fused T-step LIF (models/networks/fused_lif.py) against the reference step loop: same forward bit for bit,
same gradients to float rounding (input, initial state, θ per layer and per channel), state carried across calls,
fallbacks (hooks, float64) and the explicit choice of implementation."""

from __future__ import annotations

import zlib

import pytest
import torch

from models.networks import fused_lif
from models.networks.detector import build_detector
from models.networks.neuron import IntegerLIF, NeuronConfig, membrane_hooks, use_implementation
from models.networks.state import detach_state
from tests.helpers import TINY

CONFIGS = {
    "ternary": NeuronConfig(),
    "per-channel": NeuronConfig(per_channel_threshold=True),
    "2bit-k3": NeuronConfig(lb=-2, ub=1, surrogate_k=3.0),
    "quarter": NeuronConfig(lb=-2, ub=1, step=0.25),
    "soft-atan": NeuronConfig(reset="soft", lb=-2, ub=2, surrogate="atan", surrogate_width=0.5),
    "leak0.25-triangle-wide": NeuronConfig(leak=0.25, surrogate_width=1.5, per_channel_threshold=True),
    "fixed-theta": NeuronConfig(learn_threshold=False),
    "fp32-baseline": NeuronConfig(quantize_membrane=False, learn_threshold=False),
    "fp32-learned": NeuronConfig(quantize_membrane=False, reset="soft", per_channel_threshold=True),
}
C = 3


def _pair(config: NeuronConfig) -> tuple[IntegerLIF, IntegerLIF]:
    fused, reference = (IntegerLIF(config, channels=C, implementation=impl) for impl in ("fused", "reference"))
    with torch.no_grad():  # distinct, non-unit thresholds so that I/θ and its gradient are exercised
        theta = torch.tensor([0.6, 1.0, 1.7]).view(C, 1, 1) if config.per_channel_threshold else torch.tensor(0.8)
        for lif in (fused, reference):
            lif.log_threshold.copy_(theta.log())
    return fused, reference


def _grads(lif: IntegerLIF, xs: list[torch.Tensor], m0: torch.Tensor, weights: list[torch.Tensor]):
    """Run the calls in ``xs`` in sequence (state carried, with gradient), back-propagate a weighted sum of every
    call's spikes and the final state; return outputs and gradients."""
    xs = [x.clone().requires_grad_() for x in xs]
    m0 = m0.clone().requires_grad_()
    state, loss, spikes = m0, 0.0, []
    for x, w in zip(xs, weights[:-1], strict=True):
        s, state = lif(x, state)
        spikes.append(s.detach())
        loss = loss + (s * w).sum()
    (loss + (state * weights[-1]).sum()).backward()
    theta_grad = lif.log_threshold.grad if lif.config.learn_threshold else None
    return spikes, state.detach(), [x.grad for x in xs], m0.grad, theta_grad


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("calls", [1, 2])
def test_fused_matches_reference_forward_exactly_and_gradients_to_rounding(name, calls):
    config = CONFIGS[name]
    gen = torch.Generator().manual_seed(zlib.crc32(f"{name}/{calls}".encode()))
    T, B, H, W = 5, 2, 6, 7
    xs = [torch.randn(T, B, C, H, W, generator=gen) * 1.5 for _ in range(calls)]
    m0 = torch.randn(B, C, H, W, generator=gen)
    weights = [torch.randn(T, B, C, H, W, generator=gen) for _ in range(calls)] + [torch.randn(B, C, H, W,
                                                                                                generator=gen)]
    fused, reference = _pair(config)
    got, want = _grads(fused, xs, m0, weights), _grads(reference, xs, m0, weights)
    for s_got, s_want in zip(got[0], want[0], strict=True):
        assert torch.equal(s_got, s_want)
    assert torch.equal(got[1], want[1])  # the stored membrane, bit for bit
    for g_got, g_want in zip(got[2], want[2], strict=True):
        torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[3], want[3], rtol=1e-5, atol=1e-6)
    if config.learn_threshold:
        assert got[4].shape == fused.log_threshold.shape
        torch.testing.assert_close(got[4], want[4], rtol=1e-4, atol=1e-5)
    else:
        assert got[4] is None and want[4] is None


def test_large_layers_split_across_threads_give_the_same_result(monkeypatch):
    monkeypatch.setattr(fused_lif, "_MIN_CHUNK", 64)  # several parts on any machine with 2+ torch threads
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    config = CONFIGS["per-channel"]
    gen = torch.Generator().manual_seed(5)
    x, m0 = torch.randn(4, 3, C, 8, 9, generator=gen), torch.zeros(3, C, 8, 9)
    w = [torch.randn(4, 3, C, 8, 9, generator=gen), torch.randn(3, C, 8, 9, generator=gen)]
    fused, reference = _pair(config)
    got, want = _grads(fused, [x], m0, w), _grads(reference, [x], m0, w)
    assert torch.equal(got[0][0], want[0][0]) and torch.equal(got[1], want[1])
    torch.testing.assert_close(got[2][0], want[2][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[4], want[4], rtol=1e-4, atol=1e-5)


def test_no_grad_forward_is_identical_and_stores_nothing():
    fused, reference = _pair(CONFIGS["ternary"])
    x = torch.randn(3, 2, C, 5, 5) * 2
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(fused(x), reference(x), strict=True))
    single = torch.randn(2, C, 5, 5)  # a single step [B, C, H, W]
    assert all(torch.equal(a, b) for a, b in zip(fused(single), reference(single), strict=True))


def test_membrane_hooks_see_every_step_on_the_fused_neuron():
    fused, reference = _pair(CONFIGS["ternary"])
    x = torch.randn(4, 1, C, 3, 3) * 2
    seen: dict[str, list] = {"fused": [], "reference": []}
    with membrane_hooks([(fused, lambda u, m: seen["fused"].append((u.clone(), m.clone()))),
                         (reference, lambda u, m: seen["reference"].append((u.clone(), m.clone())))]):
        out = fused(x), reference(x)
    assert len(seen["fused"]) == 4
    for (u1, m1), (u2, m2) in zip(seen["fused"], seen["reference"], strict=True):
        assert torch.equal(u1, u2) and torch.equal(m1, m2)
    assert torch.equal(out[0][0], out[1][0])


def test_float64_runs_the_reference_loop():
    fused, reference = _pair(CONFIGS["soft-atan"])
    x = torch.randn(3, 1, C, 4, 4, dtype=torch.float64)
    assert not fused_lif.fusable(x, torch.zeros(1, C, 4, 4, dtype=torch.float64))
    a, b = fused.double()(x), reference.double()(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_implementation_is_chosen_explicitly():
    with pytest.raises(ValueError, match="implementation"):
        IntegerLIF(NeuronConfig(), implementation="fast")
    model = build_detector(TINY)
    lifs = [m for m in model.modules() if isinstance(m, IntegerLIF)]
    assert all(lif.implementation == "fused" for lif in lifs)
    assert use_implementation(model, "reference") == len(lifs) > 0
    assert all(lif.implementation == "reference" for lif in lifs)
    with pytest.raises(ValueError, match="implementation"):
        use_implementation(model, "fast")


@pytest.mark.parametrize("variant", ["spquant", "baseline"])
def test_detector_training_step_agrees_between_implementations(variant):
    torch.manual_seed(0)
    models = {impl: build_detector({**TINY, "variant": variant}).train() for impl in ("fused", "reference")}
    models["reference"].load_state_dict(models["fused"].state_dict())
    use_implementation(models["reference"], "reference")
    x = (torch.rand(2, 2, 2, 64, 96) < 0.2).to(torch.uint8) * 2  # [T, B, 2, H, W]
    results = {}
    for impl, model in models.items():
        state = None
        total = 0.0
        for _ in range(2):  # state carried across two windows, with gradient
            out, state = model(x, state)
            total = total + out["scores"].sum() + out["boxes"].sum()
        total.backward()
        results[impl] = (total.detach(), detach_state(state),
                         {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (loss_f, state_f, grads_f), (loss_r, state_r, grads_r) = results["fused"], results["reference"]
    torch.testing.assert_close(loss_f, loss_r)
    assert state_f.keys() == state_r.keys() and all(torch.equal(state_f[k], state_r[k]) for k in state_f)
    assert grads_f.keys() == grads_r.keys()
    for name in grads_f:
        torch.testing.assert_close(grads_f[name], grads_r[name], rtol=1e-3, atol=1e-4, msg=name)
