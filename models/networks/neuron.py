"""The integer LIF neuron with a quantized membrane (SpQuant-SNN), its config, and its explicit state.

One time step, with input current ``I`` (conv + BN output) and threshold ``θ``, membrane in units of θ::

    u  = λ·m + I/θ                  # charge (λ = 0.5 is a 1-bit shift in integer form)
    s  = u > 1                      # fire (strict)
    u' = (1 − s)·u   or   u − s     # hard reset to 0 (default) or soft reset by subtraction
    m  = Q(u')                      # stored state: nearest level of the grid lb..ub in steps of q

Folding for integer export: ``I/θ`` is a per-channel scale that folds into the conv and BN scales, λ is a shift,
and ``Q`` is clamp + round-half-up on the integer codes ``m/q``; nothing else is computed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from models.networks.frozen_config import FrozenConfig, check, is_real
from models.networks.fused_lif import fusable, lif_sequence
from models.networks.quant import LevelGrid
from models.networks.surrogate import SPIKE_SURROGATES, quantize_membrane, spike

RESETS = ("hard", "soft")
# How the T-step recurrence runs: "fused" (one compiled autograd op over all steps, float32 CPU tensors without
# membrane hooks; anything else runs the loop) or "reference" (the step loop of small torch ops, always).
IMPLEMENTATIONS = ("fused", "reference")
MembraneHook = Callable[[Tensor, Tensor], None]  # (charged u, stored membrane), both [B, C, H, W] in θ units


@dataclasses.dataclass(frozen=True)
class NeuronConfig(FrozenConfig):
    """Hyper-parameters of one :class:`IntegerLIF` layer.

    Attributes:
        leak: λ in ``u = λ·m + I/θ``, in [0, 1].
        lb, ub, step: the membrane level grid in θ units (default ternary ``{-1, 0, 1}``).
        reset: ``"hard"`` (to 0) or ``"soft"`` (subtract the threshold).
        surrogate, surrogate_width: spike surrogate (``"triangle"`` or ``"atan"``) and its half-width.
        surrogate_k: steepness of the stacked sigmoid surrogate of ``Q``, per grid step.
        threshold_init: initial θ (> 0).
        learn_threshold: θ is a trained parameter (else a fixed buffer).
        per_channel_threshold: one θ per output channel instead of one per layer.
        quantize_membrane: apply ``Q``; False gives the full-precision (FP32 membrane) baseline.
    """

    leak: float = 0.5
    lb: float = -1.0
    ub: float = 1.0
    step: float = 1.0
    reset: str = "hard"
    surrogate: str = "triangle"
    surrogate_width: float = 1.0
    surrogate_k: float = 2.0
    threshold_init: float = 1.0
    learn_threshold: bool = True
    per_channel_threshold: bool = False
    quantize_membrane: bool = True

    def __post_init__(self) -> None:
        check(is_real(self.leak) and 0 <= self.leak <= 1, f"NeuronConfig.leak must be in [0, 1], got {self.leak!r}")
        check(self.reset in RESETS, f"NeuronConfig.reset must be one of {RESETS}, got {self.reset!r}")
        check(self.surrogate in SPIKE_SURROGATES,
              f"NeuronConfig.surrogate must be one of {SPIKE_SURROGATES}, got {self.surrogate!r}")
        for name in ("surrogate_width", "surrogate_k", "threshold_init"):
            value = getattr(self, name)
            check(is_real(value) and math.isfinite(value) and value > 0,
                  f"NeuronConfig.{name} must be a positive finite number, got {value!r}")
        for name in ("learn_threshold", "per_channel_threshold", "quantize_membrane"):
            value = getattr(self, name)
            check(isinstance(value, bool), f"NeuronConfig.{name} must be a bool, got {value!r}")
        LevelGrid(self.lb, self.ub, self.step)  # raises ValueError on a bad grid

    @property
    def grid(self) -> LevelGrid:
        """The membrane level grid."""
        return LevelGrid(self.lb, self.ub, self.step)


class IntegerLIF(nn.Module):
    """Leaky integrate-and-fire neuron with a quantized membrane and a learnable threshold.

    ``forward(x, state) -> (spikes, state)``: ``x`` is ``[T, B, C, H, W]`` (multi-step) or ``[B, C, H, W]``
    (single step, same result as T = 1); ``state`` is ``[B, C, H, W]`` or ``None`` for a fresh one. Nothing is
    kept between calls.

    ``implementation`` picks how the steps run: ``"fused"`` (default; :mod:`models.networks.fused_lif`, the same
    forward bit for bit and the same gradients to float rounding, on float32 CPU tensors without membrane hooks —
    other calls run the loop) or ``"reference"`` (the step loop of torch ops, always). :func:`use_implementation`
    sets it on every neuron of a model. Integer inference (int8 level codes) is the exported runtime's job
    (:mod:`models.inference.runtime`), not a mode of this module.

    Membrane hooks observe the dynamics without changing them: :meth:`register_membrane_hook` (or the
    :func:`membrane_hooks` context manager) adds a callable that gets, at every step, the charged membrane ``u`` and
    the stored membrane after the step (both ``[B, C, H, W]``, in θ units); pruning calibration and FLOPs counting
    use them.
    """

    def __init__(self, config: NeuronConfig | None = None, channels: int | None = None,
                 implementation: str = "fused") -> None:
        super().__init__()
        check(implementation in IMPLEMENTATIONS,
              f"IntegerLIF implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        self.implementation = implementation
        self.config = config if config is not None else NeuronConfig()
        self.grid = self.config.grid
        self.channels = channels
        if self.config.per_channel_threshold:
            check(isinstance(channels, int) and channels > 0,
                  f"a per-channel threshold needs a positive channel count, got channels={channels!r}")
        shape = (channels, 1, 1) if self.config.per_channel_threshold else ()
        # θ = exp(log θ): positive by construction, and Adam moves it by relative steps from any scale.
        log_threshold = torch.full(shape, math.log(self.config.threshold_init))
        if self.config.learn_threshold:
            self.log_threshold = nn.Parameter(log_threshold)
        else:
            self.register_buffer("log_threshold", log_threshold)
        self._membrane_hooks: OrderedDict[int, MembraneHook] = OrderedDict()  # weakly referenced by handles

    @property
    def threshold(self) -> Tensor:
        """θ, shape ``[]`` or ``[C, 1, 1]``."""
        return self.log_threshold.exp()

    def register_membrane_hook(self, hook: MembraneHook) -> RemovableHandle:
        """Call ``hook(u, stored)`` at every step of every forward until the returned handle's ``remove()``."""
        handle = RemovableHandle(self._membrane_hooks)
        self._membrane_hooks[handle.id] = hook
        return handle

    def init_state(self, shape: tuple[int, ...] | torch.Size, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> Tensor:
        """A fresh (all-zero) state of shape ``[B, C, H, W]``."""
        if len(shape) != 4:
            raise ValueError(f"a neuron state has shape [B, C, H, W], got {tuple(shape)}")
        return torch.zeros(shape, dtype=dtype, device=device)

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if x.dim() not in (4, 5) or not x.is_floating_point():
            raise ValueError(f"IntegerLIF expects a float [T, B, C, H, W] or [B, C, H, W] input, got "
                             f"{x.dtype} {tuple(x.shape)}")
        if self.config.per_channel_threshold and x.shape[-3] != self.channels:
            raise ValueError(f"IntegerLIF has {self.channels} channels, input has {x.shape[-3]}")
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # mixed precision stops here: the membrane, θ and the level quantizer stay float32
        steps = x if x.dim() == 5 else x.unsqueeze(0)  # [T, B, C, H, W]
        state = self._checked_state(state, steps)
        if self.implementation == "fused" and not self._membrane_hooks and fusable(steps, state):
            spikes, state = lif_sequence(steps, state, self.threshold, self.config)  # divides by θ inside
        else:
            spikes, state = self._run(steps / self.threshold, state)  # current [T, B, C, H, W] in θ units
        return (spikes if x.dim() == 5 else spikes[0]), state

    def _checked_state(self, state: Tensor | None, steps: Tensor) -> Tensor:
        if state is None:
            return self.init_state(steps.shape[1:], device=steps.device, dtype=steps.dtype)
        if not isinstance(state, Tensor) or state.shape != steps.shape[1:]:
            raise ValueError(f"state shape {tuple(getattr(state, 'shape', ()))} does not match the input's "
                             f"[B, C, H, W] = {tuple(steps.shape[1:])}")
        if state.dtype != steps.dtype:
            raise ValueError(f"state dtype {state.dtype} does not match the input's {steps.dtype}")
        return state

    def _run(self, current: Tensor, membrane: Tensor) -> tuple[Tensor, Tensor]:
        """Differentiable float path: membrane values in θ units."""
        cfg, theta = self.config, self.threshold
        spikes = []
        for t in range(current.shape[0]):
            u = membrane * cfg.leak + current[t]  # [B, C, H, W]
            s = spike(u, theta, cfg.surrogate, cfg.surrogate_width)
            after = u * (1 - s) if cfg.reset == "hard" else u - s
            membrane = quantize_membrane(after, self.grid, cfg.surrogate_k) if cfg.quantize_membrane else after
            for hook in self._membrane_hooks.values():
                hook(u, membrane)
            spikes.append(s)
        return torch.stack(spikes), membrane

    def extra_repr(self) -> str:
        cfg = self.config
        grid = f"[{cfg.lb}, {cfg.ub}] step {cfg.step}" if cfg.quantize_membrane else "fp32"
        return (f"leak={cfg.leak}, membrane={grid}, reset={cfg.reset}, channels={self.channels}, "
                f"implementation={self.implementation}")


def use_implementation(model: nn.Module, implementation: str) -> int:
    """Set ``implementation`` (``"fused"`` or ``"reference"``) on every :class:`IntegerLIF` in ``model``; returns
    how many neurons it set."""
    check(implementation in IMPLEMENTATIONS,
          f"IntegerLIF implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    count = 0
    for module in model.modules():
        if isinstance(module, IntegerLIF):
            module.implementation = implementation
            count += 1
    return count


@contextlib.contextmanager
def membrane_hooks(hooks: Iterable[tuple[IntegerLIF, MembraneHook]]) -> Iterator[None]:
    """Register each ``(neuron, hook)`` pair for the duration of the ``with`` block; removed on exit, errors too."""
    handles = [lif.register_membrane_hook(hook) for lif, hook in hooks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
