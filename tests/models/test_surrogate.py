"""Surrogate-gradient functions: forward values, backward = derivative of the smooth primitive, bump positions."""

from __future__ import annotations

import pytest
import torch

from models.networks.quant import LevelGrid
from models.networks.surrogate import (
    quantize_membrane,
    spike,
    spike_primitive,
    spike_surrogate_grad,
    stacked_sigmoid,
    stacked_sigmoid_grad,
)

GRIDS = [LevelGrid(-1, 1, 1), LevelGrid(-2, 1, 1), LevelGrid(-3, 1, 1), LevelGrid(-1, 1, 0.5), LevelGrid(-2, 1, 0.25)]


def _grad(fn, u: torch.Tensor) -> torch.Tensor:
    u = u.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(u).sum(), u)
    return g


@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_quantize_forward_snaps_to_nearest_level_with_ties_up(grid: LevelGrid) -> None:
    u = torch.linspace(grid.lb - 2, grid.ub + 2, 2001, dtype=torch.float64)
    q = quantize_membrane(u, grid)
    levels = torch.tensor(grid.levels(), dtype=torch.float64)
    assert set(q.unique().tolist()) == set(levels.tolist())
    clamped = u.clamp(grid.lb, grid.ub)
    nearest_distance = (clamped[:, None] - levels[None, :]).abs().min(dim=1).values
    assert torch.allclose((clamped - q).abs(), nearest_distance)
    boundaries = torch.tensor(grid.boundaries(), dtype=torch.float64)
    assert torch.equal(quantize_membrane(boundaries, grid), boundaries + grid.step / 2)  # ties round up


@pytest.mark.parametrize("grid", GRIDS, ids=str)
@pytest.mark.parametrize("k", [1.0, 2.0, 5.0])
def test_quantize_backward_is_derivative_of_stacked_sigmoid(grid: LevelGrid, k: float) -> None:
    u = torch.linspace(grid.lb - 3, grid.ub + 3, 999, dtype=torch.float64)
    custom = _grad(lambda x: quantize_membrane(x, grid, k), u)
    smooth = _grad(lambda x: stacked_sigmoid(x, grid, k), u)
    assert torch.allclose(custom, smooth, rtol=1e-12, atol=1e-12)
    assert torch.allclose(custom, stacked_sigmoid_grad(u, grid, k), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_smooth_primitives_pass_gradcheck(grid: LevelGrid) -> None:
    u = torch.linspace(grid.lb - 1.3, grid.ub + 1.3, 37, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: stacked_sigmoid(x, grid, 2.0), (u,))
    assert torch.autograd.gradcheck(lambda x: stacked_sigmoid_grad(x, grid, 2.0), (u,))
    assert torch.autograd.gradgradcheck(lambda x: stacked_sigmoid(x, grid, 2.0), (u,))


def test_stacked_surrogate_matches_paper_formula_for_ternary() -> None:
    # SpQuant-SNN's TernMem backward: dsigmoid(x, 2, 0.5) + dsigmoid(x, 2, -0.5).
    u = torch.linspace(-4, 4, 801, dtype=torch.float64)

    def dsigmoid(x: torch.Tensor, k: float, c: float) -> torch.Tensor:
        s = torch.sigmoid(k * (x - c))
        return k * s * (1 - s)

    expected = dsigmoid(u, 2.0, 0.5) + dsigmoid(u, 2.0, -0.5)
    assert torch.allclose(stacked_sigmoid_grad(u, LevelGrid(-1, 1, 1), 2.0), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("grid", [LevelGrid(-3, 1, 1), LevelGrid(-2, 1, 0.25)], ids=str)
def test_stacked_surrogate_bumps_sit_on_rounding_boundaries(grid: LevelGrid) -> None:
    k = 8.0  # steep, so that neighbouring bumps barely overlap and each local maximum sits on its boundary
    u = torch.linspace(grid.lb - 1, grid.ub + 1, 40_001, dtype=torch.float64)
    g = stacked_sigmoid_grad(u, grid, k)
    is_peak = (g[1:-1] > g[:-2]) & (g[1:-1] >= g[2:])
    peaks = u[1:-1][is_peak]
    assert torch.allclose(peaks, torch.tensor(grid.boundaries(), dtype=torch.float64), atol=1e-3)
    assert torch.allclose(g[1:-1][is_peak], torch.full_like(peaks, k / 4), rtol=0.01)  # each bump peaks at k/4


def test_stacked_surrogate_mean_slope_is_one_on_any_grid() -> None:
    # Each bump integrates to one stair height, so the surrogate's integral over the grid span is ub - lb.
    for grid in GRIDS:
        u = torch.linspace(grid.lb - 20, grid.ub + 20, 200_001, dtype=torch.float64)
        integral = torch.trapezoid(stacked_sigmoid_grad(u, grid, 2.0), u)
        assert integral.item() == pytest.approx(grid.ub - grid.lb, rel=1e-6)


@pytest.mark.parametrize("shape", [(7,), (2, 3, 4, 5), (3, 2, 3, 4, 4)])
def test_quantize_shapes_dtypes_and_finite_grads(shape: tuple[int, ...]) -> None:
    u = (torch.randn(shape) * 1e3).requires_grad_(True)  # far outside the grid: tails must stay finite
    q = quantize_membrane(u, LevelGrid())
    assert q.shape == u.shape and q.dtype == u.dtype
    (g,) = torch.autograd.grad(q.sum(), u)
    assert g.shape == u.shape and torch.isfinite(g).all()


@pytest.mark.parametrize("kind", ["triangle", "atan"])
@pytest.mark.parametrize("width", [0.5, 1.0, 2.0])
def test_spike_forward_is_strict_and_backward_is_primitive_derivative(kind: str, width: float) -> None:
    u = torch.tensor([0.0, 0.999, 1.0, 1.0 + 1e-6, 3.0], dtype=torch.float64)
    assert spike(u, torch.tensor(1.0, dtype=torch.float64), kind, width).tolist() == [0, 0, 0, 1, 1]
    grid = torch.linspace(-3, 5, 1601, dtype=torch.float64)
    custom = _grad(lambda x: spike(x, torch.tensor(1.0, dtype=torch.float64), kind, width), grid)
    smooth = _grad(lambda x: spike_primitive(x - 1, kind, width), grid)
    assert torch.allclose(custom, smooth, rtol=1e-10, atol=1e-12)
    assert custom.max().item() == pytest.approx(1 / width)  # peak 1/w at u = 1
    wide = torch.linspace(-400, 400, 800_001, dtype=torch.float64)
    integral = torch.trapezoid(spike_surrogate_grad(wide, kind, width), wide)
    assert integral.item() == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("kind", ["triangle", "atan"])
def test_spike_primitive_passes_gradcheck(kind: str) -> None:
    x = torch.linspace(-2.3, 2.3, 23, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: spike_primitive(v, kind, 1.0), (x,))


def test_atan_matches_spikingjelly_alpha_2() -> None:
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)
    alpha = 2.0
    expected = alpha / 2 / (1 + (torch.pi / 2 * alpha * x) ** 2)  # spikingjelly surrogate.ATan backward
    assert torch.allclose(spike_surrogate_grad(x, "atan", 1.0), expected)


@pytest.mark.parametrize("theta_shape", [(), (3, 1, 1)])
def test_threshold_gets_separate_path_gradient(theta_shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    u = (torch.rand(2, 3, 4, 4, dtype=torch.float64) * 3).requires_grad_(True)
    theta = torch.full(theta_shape, 1.5, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    (spike(u, theta) * weights).sum().backward()
    x = u.detach() - 1
    tri = (1 - x.abs()).clamp(min=0)
    expected = -(weights * tri * torch.sigmoid(x) * (x > 0)) / 1.5
    assert theta.grad.shape == theta.shape
    assert torch.allclose(theta.grad, expected.sum_to_size(theta_shape))
    assert torch.allclose(u.grad, weights * tri)


def test_threshold_path_pushes_theta_up_when_fewer_spikes_are_wanted() -> None:
    u = torch.tensor([1.2, 1.5, 0.5], dtype=torch.float64)
    theta = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    spike(u, theta).sum().backward()  # loss = spike count; gradient descent must raise θ
    assert theta.grad.item() < 0


def test_threshold_without_grad_is_allowed() -> None:
    u = torch.rand(5, requires_grad=True)
    spike(u, torch.tensor(1.0)).sum().backward()
    assert u.grad is not None


def test_unknown_surrogate_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown spike surrogate 'sigmoid'"):
        spike(torch.zeros(3), torch.tensor(1.0), "sigmoid")
    with pytest.raises(ValueError, match="unknown spike surrogate"):
        spike_surrogate_grad(torch.zeros(3), "relu", 1.0)
    with pytest.raises(ValueError, match="unknown spike surrogate"):
        spike_primitive(torch.zeros(3), "relu", 1.0)
