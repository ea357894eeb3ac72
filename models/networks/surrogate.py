"""Surrogate-gradient autograd functions: the membrane quantizer Q and the spike, with their smooth primitives.

* :func:`quantize_membrane` — forward: nearest level of a :class:`~models.networks.quant.LevelGrid` (a staircase);
  backward: the *stacked* surrogate, one sigmoid derivative per rounding boundary ``c``::

      dQ/du ≈ Σ_c k·σ(z_c)·(1 − σ(z_c)),   z_c = k·(u − c)/step

  With ``step = 1`` this is exactly SpQuant-SNN's formula (bumps at ±0.5, -1.5, …, each peaking at k/4).
  Measuring the steepness in units of the grid step keeps the mean slope at 1 on finer grids (each bump
  integrates to ``step``, the height of its stair), instead of growing as 1/step.
* :func:`spike` — forward: ``u > 1`` (strict; the membrane is in units of θ); backward: a triangle or atan
  surrogate of the Heaviside step, plus LT-SNN's *separate surrogate gradient path* to the threshold θ.

Each backward is the exact derivative of a smooth primitive (:func:`stacked_sigmoid`, :func:`spike_primitive`),
which is how the tests check them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from models.networks.quant import LevelGrid

SPIKE_SURROGATES = ("triangle", "atan")


def stacked_sigmoid(u: Tensor, grid: LevelGrid, k: float) -> Tensor:
    """The smooth staircase ``Σ_c step·σ(k(u − c)/step)``; its derivative is the stacked surrogate."""
    return sum(grid.step * torch.sigmoid(k * (u - c) / grid.step) for c in grid.boundaries())


def stacked_sigmoid_grad(u: Tensor, grid: LevelGrid, k: float) -> Tensor:
    """The stacked surrogate ``Σ_c k·σ(z)(1 − σ(z))``, ``z = k(u − c)/step``, over every rounding boundary ``c``."""
    grad = torch.zeros_like(u)
    for c in grid.boundaries():
        sig = torch.sigmoid((u - c) * (k / grid.step))
        grad += k * sig * (1 - sig)
    return grad


class _QuantizeMembrane(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, u: Tensor, grid: LevelGrid, k: float) -> Tensor:
        ctx.save_for_backward(u)
        ctx.grid, ctx.k = grid, k
        codes = grid.codes(u)
        return codes if grid.step == 1.0 else codes * grid.step

    @staticmethod
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor, None, None]:
        (u,) = ctx.saved_tensors
        return grad_out * stacked_sigmoid_grad(u, ctx.grid, ctx.k), None, None


def quantize_membrane(u: Tensor, grid: LevelGrid, k: float = 2.0) -> Tensor:
    """Snap ``u`` to the nearest level of ``grid`` (values, in θ units); backward is the stacked surrogate."""
    return _QuantizeMembrane.apply(u, grid, k)


def spike_surrogate_grad(x: Tensor, kind: str, width: float) -> Tensor:
    """Surrogate derivative of ``H(x)``: triangle ``max(0, w − |x|)/w²`` or atan ``(1/w)/(1 + (πx/w)²)``.

    Both integrate to 1 and peak at ``1/w``; atan with ``w = 1`` is spikingjelly's ``ATan(alpha=2)``.
    """
    if kind == "triangle":
        return (width - x.abs()).clamp(min=0) / width**2
    if kind == "atan":
        return (1 / width) / (1 + (math.pi / width * x) ** 2)
    raise ValueError(f"unknown spike surrogate {kind!r}; choose one of {SPIKE_SURROGATES}")


def spike_primitive(x: Tensor, kind: str, width: float) -> Tensor:
    """A smooth step whose derivative is :func:`spike_surrogate_grad` (for tests and plots)."""
    if kind == "triangle":
        ramp = (x / width).clamp(-1, 1)
        return 0.5 + ramp - ramp * ramp.abs() / 2
    if kind == "atan":
        return torch.atan(math.pi / width * x) / math.pi + 0.5
    raise ValueError(f"unknown spike surrogate {kind!r}; choose one of {SPIKE_SURROGATES}")


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, u: Tensor, theta: Tensor, kind: str, width: float) -> Tensor:
        ctx.save_for_backward(u, theta)
        ctx.kind, ctx.width = kind, width
        return (u > 1).to(u.dtype)

    @staticmethod
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        u, theta = ctx.saved_tensors
        x = u - 1
        surrogate = grad_out * spike_surrogate_grad(x, ctx.kind, ctx.width)
        grad_theta = None
        if ctx.needs_input_grad[1]:
            # LT-SNN's separate path: firing neurons push θ by −g·sg·σ(x); divided by θ because u is in θ units.
            extra = -(surrogate * torch.sigmoid(x) * (x > 0)) / theta
            grad_theta = extra.sum_to_size(theta.shape)
        return surrogate if ctx.needs_input_grad[0] else None, grad_theta, None, None


def spike(u: Tensor, theta: Tensor, kind: str = "triangle", width: float = 1.0) -> Tensor:
    """Binary spikes ``u > 1`` as ``u.dtype``, with surrogate gradients to ``u`` and (separately) to ``theta``.

    ``theta`` only routes gradient: it must broadcast against ``u`` (``[]`` per layer, ``[C, 1, 1]`` per channel).
    """
    if kind not in SPIKE_SURROGATES:
        raise ValueError(f"unknown spike surrogate {kind!r}; choose one of {SPIKE_SURROGATES}")
    return _Spike.apply(u, theta, kind, width)
