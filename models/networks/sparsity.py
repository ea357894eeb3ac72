"""Training losses that make the network do less work: the channel-gate loss and the activity penalty.

Both watch a model's forward passes (the gates' records, hooks on the LIF layers) and are read once per unroll:
``loss() -> (total, parts)``, ``total`` a mean per window (a trainer scales it as it scales the detection loss).

* :class:`GateLoss` ties each :class:`~models.networks.gates.ChannelGate` to its target masks (the channels holding
  ``mass`` of the window's activation, :func:`~models.networks.gates.target_mask`): ``gain · BCE(logits, target)``
  averaged over gated layers and windows, plus ``budget_gain · max(0, kept − budget)`` where ``kept`` is the
  FLOPs-weighted share of the gated convs' output channels the gates kept (its value the hard masks', its gradient
  the sigmoids'), so the gates are pushed below a compute budget that the 85 % targets alone may not reach.
* :class:`ActivityPenalty`: ``gain ·`` the mean firing rate over every LIF layer and window (sparser spikes are less
  work for the event-driven spike convs of the numpy runtime, and fewer synaptic operations).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.networks.gates import gates
from models.networks.neuron import IntegerLIF


class GateLoss:
    """``loss() -> (total, parts)`` over the gate records since the last call; ``parts = [bce, budget, kept]``
    (detached; ``kept`` the FLOPs-weighted kept share). Construction switches the model's gates to recording."""

    def __init__(self, model: nn.Module, mass: float = 0.85, gain: float = 1.0, budget: float = 1.0,
                 budget_gain: float = 1.0) -> None:
        if not 0 < mass <= 1 or not 0 <= budget <= 1:
            raise ValueError(f"mask mass must lie in (0, 1] and the budget in [0, 1], got {mass} and {budget}")
        self.gates = gates(model)
        if not self.gates:
            raise ValueError("the model has no channel gates (build it with channel_gates=True)")
        for gate in self.gates:
            gate.target_mass = mass
        self.gain, self.budget, self.budget_gain = gain, budget, budget_gain

    def __call__(self) -> tuple[Tensor, Tensor]:
        records = [r for gate in self.gates for r in gate.records]
        for gate in self.gates:
            gate.records.clear()
        if not records:
            raise RuntimeError("no gate records: run the model in training mode before reading the gate loss")
        bce = torch.stack([nn.functional.binary_cross_entropy_with_logits(r.logits.float(), r.target.float())
                           for r in records]).mean()
        kept = (sum(r.channel_flops * r.keep.float().sum() for r in records)
                / sum(r.channel_flops * r.keep.numel() for r in records))
        over = (kept - self.budget).clamp(min=0)
        total = self.gain * bce + self.budget_gain * over
        return total, torch.stack([bce, over, kept]).detach()


class ActivityPenalty:
    """``penalty() -> (total, rate)``: ``gain`` × the mean firing rate of every LIF of ``model`` over the forward
    passes since the last call (a differentiable mean of the spikes: the surrogate gradient carries it). Hooks stay
    on the model until :meth:`remove`."""

    def __init__(self, model: nn.Module, gain: float) -> None:
        self.gain = gain
        self.rates: list[Tensor] = []
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules() if isinstance(m, IntegerLIF)]
        if not self.handles:
            raise ValueError("the model has no LIF layers")

    def _hook(self, module: nn.Module, args: tuple[Tensor, ...], out: tuple[Tensor, Tensor]) -> None:
        if module.training:
            self.rates.append(out[0].float().mean())  # spikes [T, B, C, h, w]

    def __call__(self) -> tuple[Tensor, Tensor]:
        if not self.rates:
            raise RuntimeError("no spikes seen: run the model in training mode before reading the penalty")
        rate = torch.stack(self.rates).mean()
        self.rates = []
        return self.gain * rate, rate.detach()

    def remove(self) -> None:
        """Take the hooks off the model."""
        for handle in self.handles:
            handle.remove()
