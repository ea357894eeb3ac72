"""The whole T-step LIF recurrence as one autograd operation, with compiled (numba) forward and backward kernels.

:class:`~models.networks.neuron.IntegerLIF`'s reference path runs each time step as a dozen small elementwise torch
ops, each of which autograd records and later reverses: on a CPU most of a training step goes to allocating,
dispatching and walking those tensors. Here one kernel runs every neuron through all ``T`` steps with its membrane
in a register, and one kernel runs the reverse-time recurrence of the surrogate gradients. The operation takes the
input currents *before* the division by θ (``x``, not ``x/θ``), so the division and its gradient to θ are fused too.

Forward is bit-identical to the reference loop (the same float32 operations in the same order: ``x/θ``,
``λ·m + c``, ``u > 1``, ``u·(1 − s)`` or ``u − s``, clamp, ``floor(· + 0.5)``). Backward computes the same
derivatives — the spike surrogate (triangle / atan), LT-SNN's separate path to θ, the stacked-sigmoid surrogate of
``Q`` — so gradients agree to float rounding (autograd sums the same terms in another order).

What backward needs is the charged membrane ``u`` of every step (one float per neuron and step, ``[T, N]``); the
spike, the reset membrane and ``c = x/θ`` are recomputed from it and from ``x``.

:func:`fusable` says which calls this covers: float32 CPU tensors, every :class:`NeuronConfig` option. Anything
else (CUDA, float64, a registered membrane hook) is the caller's to run through the reference loop.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import torch
from numba import njit
from torch import Tensor
from torch.autograd.function import FunctionCtx

if TYPE_CHECKING:
    from models.networks.neuron import NeuronConfig

_KINDS = {"triangle": 0, "atan": 1}
_MIN_CHUNK = 1 << 15  # neurons per thread below which a thread costs more than it saves
_pool: ThreadPoolExecutor | None = None


def _parallel(kernel: Callable[..., None], rows: int, neurons: int, *args: object) -> None:
    """Run ``kernel(lo, hi, *args)`` over rows ``[0, rows)`` in contiguous parts on torch's number of threads.

    Neurons are independent, so the parts need no synchronisation. Python threads around ``nogil`` kernels rather
    than numba's parallel layer: its OpenMP runtime beside torch's crashed at interpreter exit.
    """
    global _pool
    parts = max(1, min(torch.get_num_threads(), neurons // _MIN_CHUNK, rows))
    if parts == 1:
        kernel(0, rows, *args)
        return
    if _pool is None or _pool._max_workers < parts:  # grows when torch's thread count does
        _pool = ThreadPoolExecutor(parts, thread_name_prefix="fused-lif")
    bounds = [rows * p // parts for p in range(parts + 1)]
    futures = [_pool.submit(kernel, lo, hi, *args) for lo, hi in itertools.pairwise(bounds[1:])]
    kernel(bounds[0], bounds[1], *args)  # the calling thread takes the first part
    for future in futures:
        future.result()


@njit(cache=True, nogil=True, inline="always")
def _charge(m, x, th, leak, hard, quantize, lb, ub, step):
    """One neuron, one step, float32 throughout: (charged u, spike, stored membrane), as the reference computes them.

    Dividing and multiplying by a step of 1 is exact, so the grid needs no branch (branch-free code vectorises).
    """
    one = np.float32(1.0)
    u = m * leak + x / th
    s = one if u > one else np.float32(0.0)
    after = u * (one - s) if hard else u - s
    level = np.float32(math.floor(min(max(after, lb), ub) / step + np.float32(0.5))) * step
    return u, s, level if quantize else after


@njit(cache=True, nogil=True)
def _forward_kernel(lo, hi, x, m0, theta, channels, leak, hard, quantize, lb, ub, step, store, spikes, mT, charged):
    # x, spikes, charged: [T, R, P] float32, R = B·C rows of P = H·W neurons (charged is [0, 0, 0] when nothing is
    # stored); m0, mT: [R, P]; theta: [C] or [1]. This call runs rows lo..hi-1, time outer and neurons inner so the
    # inner loop walks contiguous memory.
    for r in range(lo, hi):
        th = theta[r % channels]
        m = mT[r]
        m[:] = m0[r]
        for t in range(x.shape[0]):
            xt, st = x[t, r], spikes[t, r]
            if store:
                ct = charged[t, r]
                for j in range(m.shape[0]):
                    ct[j], st[j], m[j] = _charge(m[j], xt[j], th, leak, hard, quantize, lb, ub, step)
            else:
                for j in range(m.shape[0]):
                    _, st[j], m[j] = _charge(m[j], xt[j], th, leak, hard, quantize, lb, ub, step)


@njit(cache=True, nogil=True)
def _backward_kernel(lo, hi, x, charged, theta, channels, grad_spikes, grad_mT, leak, hard, quantize, lowest_exp,
                     ratio, boundaries, k, kind, width, need_theta, grad_x, grad_m0, grad_theta):
    # x, charged, grad_spikes, grad_x: [T, R, P]; lowest_exp: [T, R, P] exp(−z) of the lowest rounding boundary
    # ([0, 0, 0] without Q); grad_mT, grad_m0 and grad_theta (per neuron, summed over t): [R, P]; rows lo..hi-1.
    # grad_m0 holds dL/dm[t] while the steps run backwards.
    one, zero = np.float32(1.0), np.float32(0.0)
    pi_w = np.float32(math.pi) / width
    for r in range(lo, hi):
        th = theta[r % channels]
        gm, gth = grad_m0[r], grad_theta[r]
        gm[:] = grad_mT[r]
        gth[:] = zero
        for t in range(x.shape[0] - 1, -1, -1):
            ut, gst, xt, gxt = charged[t, r], grad_spikes[t, r], x[t, r], grad_x[t, r]
            et = lowest_exp[t, r] if quantize else xt
            for j in range(gm.shape[0]):
                u = ut[j]
                s = one if u > one else zero
                ga = gm[j]
                if quantize:
                    # the stacked surrogate Σ_c k·σ(z_c)(1 − σ(z_c)), z_c = (after − c)·k/step; the boundaries are
                    # a step apart, so exp(−z) of the next one is this one's times exp(k)
                    e = et[j]
                    dq = zero
                    for _ in range(boundaries):
                        sig = one / (one + e)
                        dq += k * sig * (one - sig)
                        e *= ratio
                    ga *= dq
                if hard:
                    gu = ga * (one - s)
                    gs = gst[j] - ga * u
                else:
                    gu = ga
                    gs = gst[j] - ga
                xx = u - one
                if kind == 0:
                    sg = max(width - abs(xx), zero) / (width * width)
                else:
                    z = pi_w * xx
                    sg = (one / width) / (one + z * z)
                g_sg = gs * sg
                gu += g_sg
                if need_theta:
                    # LT-SNN's separate path (−g·sg·σ(x)/θ where the neuron fires) and the path through c = x/θ
                    fired = g_sg / (one + np.float32(math.exp(-xx))) if xx > zero else zero
                    gth[j] -= fired / th + gu * xt[j] / (th * th)
                gxt[j] = gu / th
                gm[j] = gu * leak


def fusable(x: Tensor, state: Tensor) -> bool:
    """Whether :func:`lif_sequence` covers these tensors (float32 on the CPU)."""
    return x.device.type == "cpu" and state.device.type == "cpu" and x.dtype == torch.float32 == state.dtype


def _constants(config: NeuronConfig) -> dict[str, object]:
    f32 = np.float32
    grid = config.grid
    return {
        "leak": f32(config.leak), "hard": config.reset == "hard", "quantize": config.quantize_membrane,
        "lb": f32(grid.lb), "ub": f32(grid.ub), "step": f32(grid.step),
        "lowest": f32(grid.boundaries()[0]), "ratio": f32(math.exp(config.surrogate_k)),
        "boundaries": len(grid.boundaries()), "k": f32(config.surrogate_k),
        "slope": f32(config.surrogate_k / grid.step), "kind": _KINDS[config.surrogate],
        "width": f32(config.surrogate_width),
    }


def _flat_theta(theta: Tensor) -> np.ndarray:
    return theta.detach().reshape(-1).contiguous().numpy()  # [C] or [1]


class _FusedLIF(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, membrane: Tensor, theta: Tensor,  # type: ignore[override]
                config: NeuronConfig, store: bool) -> tuple[Tensor, Tensor]:
        c = _constants(config)
        steps, batch, channels = x.shape[:3]
        xf = x.detach().contiguous().view(steps, batch * channels, -1)  # [T, R, P]: R = B·C rows of H·W
        m0 = membrane.detach().contiguous().view(xf.shape[1:])  # [R, P]
        spikes, mT = torch.empty_like(xf), torch.empty_like(m0)
        charged = torch.empty_like(xf) if store else xf.new_empty(0, 0, 0)
        _parallel(_forward_kernel, xf.shape[1], xf.numel(), xf.numpy(), m0.numpy(), _flat_theta(theta),
                  theta.numel(), c["leak"], c["hard"], c["quantize"], c["lb"], c["ub"], c["step"], store,
                  spikes.numpy(), mT.numpy(), charged.numpy())
        ctx.config, ctx.shape = config, x.shape
        ctx.save_for_backward(xf, charged, theta)
        return spikes.view(x.shape), mT.view(membrane.shape)

    @staticmethod
    def backward(ctx: FunctionCtx, grad_spikes: Tensor | None,  # type: ignore[override]
                 grad_state: Tensor | None) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        xf, charged, theta = ctx.saved_tensors
        if charged.numel() == 0:
            raise RuntimeError("fused LIF: backward through a forward run that stored no membranes")
        c = _constants(ctx.config)
        gs = torch.zeros_like(xf) if grad_spikes is None else grad_spikes.contiguous().view(xf.shape)
        gm = torch.zeros_like(xf[0]) if grad_state is None else grad_state.contiguous().view(xf.shape[1:])
        need_theta = ctx.needs_input_grad[2]
        lowest_exp = xf.new_empty(0, 0, 0)
        if ctx.config.quantize_membrane:
            # exp(−z) at the lowest rounding boundary for every neuron and step, [T, R, P]: it needs no recurrence,
            # so torch's vectorised, threaded exp computes it in one pass
            fired = charged > 1
            after = charged.masked_fill(fired, 0.0) if c["hard"] else charged - fired.to(charged.dtype)
            lowest_exp = after.sub_(float(c["lowest"])).mul_(-float(c["slope"])).exp_()
        grad_x, grad_m0, grad_theta = torch.empty_like(xf), torch.empty_like(xf[0]), torch.empty_like(xf[0])
        _parallel(_backward_kernel, xf.shape[1], xf.numel(), xf.numpy(), charged.numpy(), _flat_theta(theta),
                  theta.numel(), gs.numpy(), gm.numpy(), c["leak"], c["hard"], c["quantize"], lowest_exp.numpy(),
                  c["ratio"], c["boundaries"], c["k"], c["kind"], c["width"], need_theta,
                  grad_x.numpy(), grad_m0.numpy(), grad_theta.numpy())
        g_theta = None
        if need_theta:
            per_neuron = grad_theta.view(ctx.shape[1:])  # [B, C, H, W]
            g_theta = per_neuron.sum((0, 2, 3)) if theta.numel() > 1 else per_neuron.sum()
            g_theta = g_theta.view(theta.shape)
        return (grad_x.view(ctx.shape) if ctx.needs_input_grad[0] else None,
                grad_m0.view(ctx.shape[1:]) if ctx.needs_input_grad[1] else None, g_theta, None, None)


def lif_sequence(x: Tensor, membrane: Tensor, theta: Tensor, config: NeuronConfig) -> tuple[Tensor, Tensor]:
    """All ``T`` steps of the LIF from input currents ``x`` ``[T, B, C, H, W]`` (not yet divided by θ) and the
    membrane ``[B, C, H, W]``, with θ ``[]`` or ``[C, 1, 1]``: ``(spikes [T, B, C, H, W], membrane [B, C, H, W])``.

    The caller checks :func:`fusable` first. Nothing is stored for backward when no gradient is wanted.
    """
    store = torch.is_grad_enabled() and (x.requires_grad or membrane.requires_grad or theta.requires_grad)
    return _FusedLIF.apply(x, membrane, theta, config, store)
