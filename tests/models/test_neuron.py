"""IntegerLIF: charge/fire/reset values, grids, step modes, explicit state, int8 inference, threshold, config."""

from __future__ import annotations

import math

import pytest
import torch

from models.networks.neuron import IntegerLIF, NeuronConfig, membrane_hooks
from models.networks.state import detach_state, reset_state, state_nbytes

CONFIGS = {
    "ternary": NeuronConfig(),
    "2bit": NeuronConfig(lb=-2, ub=1),
    "3bit": NeuronConfig(lb=-3, ub=1),
    "half": NeuronConfig(lb=-1, ub=1, step=0.5),
    "quarter": NeuronConfig(lb=-2, ub=1, step=0.25),
    "soft": NeuronConfig(reset="soft", lb=-2, ub=2),
    "atan-leak0.25": NeuronConfig(leak=0.25, surrogate="atan"),
    "per-channel": NeuronConfig(per_channel_threshold=True),
}


def _neuron(config: NeuronConfig, channels: int = 3) -> IntegerLIF:
    neuron = IntegerLIF(config, channels=channels)
    if config.per_channel_threshold:
        with torch.no_grad():  # distinct, non-unit thresholds so that I/θ is exercised
            neuron.log_threshold.copy_(torch.tensor([0.6, 1.0, 1.7]).log().view(3, 1, 1))
    return neuron


def _one(values: list[float], config: NeuronConfig | None = None, theta: float = 1.0):
    neuron = IntegerLIF(config or NeuronConfig(threshold_init=theta))
    x = torch.tensor(values).view(-1, 1, 1, 1, 1)  # [T, 1, 1, 1, 1]
    membranes, state = [], None
    for t in range(len(values)):
        s, state = neuron(x[t], state)
        membranes.append((s.item(), state.item()))
    return membranes


def test_charge_fire_reset_by_hand() -> None:
    # u = 0.5·m + I; fire if u > 1 (strict); hard reset; m = nearest of {-1, 0, 1}.
    steps = _one([0.6, 0.6, 1.0, 0.6, -0.7, 0.9, 0.2, 0.0])
    assert steps == [(0, 1), (1, 0), (0, 1), (1, 0), (0, -1), (0, 0), (0, 0), (0, 0)]
    # u = 1.0 exactly does not fire; ties round up (0.5 -> 1, -0.5 -> 0).
    assert _one([1.0]) == [(0, 1)]
    assert _one([0.5, -0.5, -1.5]) == [(0, 1), (0, 0), (0, -1)]


def test_threshold_scales_the_input() -> None:
    assert _one([1.5, 1.5], theta=2.0) == [(0, 1), (1, 0)]  # u = 0.75 -> m = 1; u = 0.5 + 0.75 > 1
    assert _one([2.1], theta=2.0) == [(1, 0)]


def test_soft_reset_and_wider_grids() -> None:
    assert _one([2.6, 0.0], NeuronConfig(reset="soft", lb=-2, ub=2)) == [(1, 2), (0, 1)]  # 2.6-1 = 1.6 -> 2
    assert _one([-2.6, 0.0], NeuronConfig(lb=-3, ub=1)) == [(0, -3), (0, -1)]  # -2.6 -> -3; then -1.5 ties up to -1
    assert _one([0.3, 0.0], NeuronConfig(step=0.25, lb=-2, ub=1)) == [(0, 0.25), (0, 0.25)]  # 0.125 rounds up


def test_full_precision_membrane_is_not_quantized() -> None:
    steps = _one([0.6, 0.3, -5.0], NeuronConfig(quantize_membrane=False))
    assert steps == [(0, pytest.approx(0.6)), (0, pytest.approx(0.6)), (0, pytest.approx(-4.7))]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_multi_step_equals_single_steps(name: str) -> None:
    torch.manual_seed(0)
    neuron = _neuron(CONFIGS[name])
    x = torch.randn(6, 2, 3, 4, 5) * 1.5
    spikes, state = neuron(x)
    single, step_state = [], None
    for t in range(6):
        s, step_state = neuron(x[t], step_state)
        single.append(s)
    assert torch.equal(spikes, torch.stack(single)) and torch.equal(state, step_state)
    # Chunked multi-step calls carrying the state give the same as one call.
    first, mid = neuron(x[:2])
    rest, end = neuron(x[2:], mid)
    assert torch.equal(torch.cat([first, rest]), spikes) and torch.equal(end, state)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_states_stay_on_the_grid(name: str) -> None:
    config = CONFIGS[name]
    _, state = _neuron(config)(torch.randn(8, 2, 3, 4, 4) * 3)
    levels = torch.tensor(config.grid.levels())
    assert torch.isin(state, levels).all()


def test_membrane_hooks_observe_every_step_and_are_removed() -> None:
    neuron = IntegerLIF()
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    x = torch.randn(4, 2, 3, 5, 5) * 2
    spikes, state = neuron(x)
    with membrane_hooks([(neuron, lambda u, stored: seen.append((u.clone(), stored.clone())))]):
        hooked_spikes, _ = neuron(x)
    assert len(seen) == 4  # one call per time step
    assert torch.equal(seen[-1][1], state) and torch.equal(hooked_spikes, spikes)  # observed, not changed
    assert all(torch.equal((u > 1).float(), s) for (u, _), s in zip(seen, spikes, strict=True))
    neuron(x)
    assert len(seen) == 4  # removed on exit


def test_membrane_hooks_are_removed_when_the_block_raises() -> None:
    neuron = IntegerLIF()
    calls = []
    with pytest.raises(RuntimeError, match="boom"), membrane_hooks([(neuron, lambda u, s: calls.append(1))]):
        neuron(torch.ones(1, 1, 1, 2, 2))
        raise RuntimeError("boom")
    neuron(torch.ones(1, 1, 1, 2, 2))
    assert calls == [1]
    handle = neuron.register_membrane_hook(lambda u, s: calls.append(2))
    neuron(torch.ones(2, 1, 1, 2, 2))
    handle.remove()
    neuron(torch.ones(2, 1, 1, 2, 2))
    assert calls == [1, 2, 2]


def test_forward_never_modifies_the_callers_state() -> None:
    neuron = IntegerLIF()
    _, state = neuron(torch.randn(3, 2, 1, 4, 4) * 2)
    before = state.clone()
    neuron(torch.randn(3, 2, 1, 4, 4) * 2, state)
    assert torch.equal(state, before)


def test_no_hidden_memory_and_streams_are_isolated() -> None:
    torch.manual_seed(2)
    neuron = IntegerLIF()
    buffers_before = {k: v.clone() for k, v in neuron.state_dict().items()}
    a, b = torch.randn(4, 1, 1, 3, 3) * 2, torch.randn(4, 1, 1, 3, 3) * 2
    alone_a, _ = neuron(a)
    alone_b, _ = neuron(b)
    # Interleave two streams through the same module, step by step: each sees only its own state.
    state_a = state_b = None
    out_a, out_b = [], []
    for t in range(4):
        s, state_a = neuron(a[t], state_a)
        out_a.append(s)
        s, state_b = neuron(b[t], state_b)
        out_b.append(s)
    assert torch.equal(torch.stack(out_a), alone_a) and torch.equal(torch.stack(out_b), alone_b)
    # A second model gives the same result, and running it did not touch the first one.
    other = IntegerLIF()
    assert torch.equal(other(a)[0], alone_a)
    assert all(torch.equal(v, buffers_before[k]) for k, v in neuron.state_dict().items())
    assert set(neuron.state_dict()) == {"log_threshold"}


def test_reset_detach_and_nbytes() -> None:
    neuron = IntegerLIF()
    x = (torch.rand(3, 4, 2, 3, 3) * 2).requires_grad_(True)
    _, state = neuron(x)
    assert state.grad_fn is not None
    assert detach_state(state).grad_fn is None and torch.equal(detach_state(state), state)
    mask = torch.tensor([True, False, True, False])
    fresh = reset_state(state, mask)
    assert not fresh[mask].any() and torch.equal(fresh[~mask], state[~mask])
    nested = {"a": state, "b": {"c": torch.zeros((4, 2, 3, 3), dtype=torch.int8)}, "d": None}
    assert state_nbytes(nested) == 4 * 18 * 4 + 4 * 18
    reset = reset_state(nested, mask)
    assert set(reset) == {"a", "b", "d"} and reset["d"] is None
    # A reset sample behaves exactly like a fresh stream.
    y = torch.rand(2, 4, 2, 3, 3) * 2
    after_reset, _ = neuron(y, fresh)
    assert torch.equal(after_reset[:, mask], neuron(y[:, mask])[0])


def test_reset_and_state_bad_input() -> None:
    state = torch.zeros(4, 1, 2, 2)
    with pytest.raises(ValueError, match="1-D bool"):
        reset_state(state, torch.tensor([1, 0, 1, 0]))
    with pytest.raises(ValueError, match="has 3 samples"):
        reset_state(state, torch.tensor([True, False, True]))
    with pytest.raises(TypeError, match="state must be"):
        detach_state([state])
    with pytest.raises(TypeError, match="state must be"):
        state_nbytes((state,))


def test_bad_input_and_state_raise() -> None:
    neuron = IntegerLIF()
    with pytest.raises(ValueError, match=r"\[T, B, C, H, W\] or \[B, C, H, W\]"):
        neuron(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="float"):
        neuron(torch.zeros(1, 1, 2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"state shape \(1, 1, 2, 3\) does not match .* \(1, 1, 2, 2\)"):
        neuron(torch.zeros(3, 1, 1, 2, 2), torch.zeros(1, 1, 2, 3))
    with pytest.raises(ValueError, match="state dtype"):
        neuron(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.int8))
    with pytest.raises(ValueError, match="has 3 channels, input has 4"):
        IntegerLIF(NeuronConfig(per_channel_threshold=True), channels=3)(torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="positive channel count"):
        IntegerLIF(NeuronConfig(per_channel_threshold=True))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        neuron.init_state((2, 3))


def test_gradient_flows_through_time_and_quantizer() -> None:
    neuron = IntegerLIF()
    x = (torch.rand(4, 2, 1, 3, 3) * 1.2).requires_grad_(True)
    spikes, _ = neuron(x)
    spikes[-1].sum().backward()  # the last step depends on earlier inputs only through the quantized membrane
    assert x.grad[0].abs().sum() > 0 and torch.isfinite(x.grad).all()
    assert neuron.log_threshold.grad is not None and neuron.log_threshold.grad.item() != 0


def test_threshold_is_positive_initialised_and_optionally_fixed() -> None:
    neuron = IntegerLIF(NeuronConfig(threshold_init=0.3, per_channel_threshold=True), channels=5)
    assert neuron.threshold.shape == (5, 1, 1) and torch.allclose(neuron.threshold, torch.tensor(0.3))
    with torch.no_grad():
        neuron.log_threshold.fill_(-50.0)  # any parameter value is still a positive threshold
    assert (neuron.threshold > 0).all()
    fixed = IntegerLIF(NeuronConfig(learn_threshold=False))
    assert list(fixed.parameters()) == [] and fixed.threshold.item() == 1.0


@pytest.mark.parametrize("start", [5.0, 0.05])
def test_misinitialised_threshold_recovers(start: float) -> None:
    # Target a 20 % firing rate on a fixed input; θ is the only parameter, so it must move to a working value.
    torch.manual_seed(3)
    x = torch.rand(4, 16, 4, 6, 6) * 2  # [T, B, C, H, W]
    neuron = IntegerLIF(NeuronConfig(threshold_init=start))
    optimizer = torch.optim.Adam(neuron.parameters(), lr=0.05)
    for _ in range(150):
        spikes, _ = neuron(x)
        loss = (spikes.mean() - 0.2) ** 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    rate = neuron(x)[0].mean().item()
    assert abs(rate - 0.2) < 0.05, (neuron.threshold.item(), rate)
    assert 0.5 < neuron.threshold.item() < 3.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"leak": 1.5}, "leak"), ({"leak": -0.1}, "leak"), ({"leak": True}, "leak"),
    ({"reset": "zero"}, "reset"), ({"surrogate": "sigmoid"}, "surrogate"),
    ({"surrogate_width": 0}, "surrogate_width"), ({"surrogate_k": -2}, "surrogate_k"),
    ({"threshold_init": 0.0}, "threshold_init"), ({"threshold_init": math.inf}, "threshold_init"),
    ({"learn_threshold": 1}, "learn_threshold"), ({"quantize_membrane": "yes"}, "quantize_membrane"),
    ({"lb": 1}, "lb <= 0"), ({"step": 0.3}, "multiple"), ({"lb": -200}, "int8"),
])
def test_bad_neuron_config_raises(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NeuronConfig(**kwargs)


def test_neuron_config_dict_round_trip() -> None:
    config = NeuronConfig(leak=0.25, lb=-2, ub=1, step=0.5, reset="soft", surrogate="atan", per_channel_threshold=True)
    assert NeuronConfig.from_dict(config.to_dict()) == config
    assert NeuronConfig.from_dict({"lb": -3}) == NeuronConfig(lb=-3)
    with pytest.raises(ValueError, match=r"unknown NeuronConfig keys \['tau'\]"):
        NeuronConfig.from_dict({"tau": 2.0})
    with pytest.raises(ValueError, match="leak"):
        NeuronConfig.from_dict({"leak": 7})
    with pytest.raises(AttributeError):
        config.leak = 0.5  # frozen


def test_half_precision_input_runs_the_neuron_in_float32():
    """Under autocast a conv hands bf16 currents to the neuron: membranes, θ and the quantizer stay float32."""
    neuron = IntegerLIF()
    x = (torch.randn(4, 2, 3, 5, 5) * 2).to(torch.bfloat16)
    spikes, state = neuron(x)
    reference_spikes, reference_state = neuron(x.float())
    assert spikes.dtype == state.dtype == torch.float32
    assert torch.equal(spikes, reference_spikes) and torch.equal(state, reference_state)
