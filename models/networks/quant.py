"""Quantization grids: the membrane level grid, and per-output-channel symmetric weight fake-quant with an STE.

Weights: ``b`` bits give integer codes in ``[-(2^(b-1)-1), 2^(b-1)-1]`` times one scale per output channel,
recomputed every forward: ``maxabs`` (the channel's max |w| maps to the top code) or ``sawb`` (the SpQuant code's
SAWB "asymm" rule: the clip range is ``2·mean|w|``, so outliers clip and the bulk of the weights gets finer
steps); 2 bits means ternary codes ``{-1, 0, 1}`` with a TWN threshold (``|w| > t·mean|w|``) and scale
``mean |w|`` over the kept weights, under either rule. 32 bits means full precision (no quantizer), so the baseline
uses the same module classes. ``weight_codes`` returns exactly the integers and scales that the fake-quant forward
multiplies, which is what an integer exporter stores.

Activations (the Detect head's, where ``head_act_bits`` is set): :class:`QuantSiLU` quantizes a conv's pre-activation
to signed ``b``-bit codes on a calibrated per-tensor scale, applies SiLU, and quantizes the result on the same scale,
so an integer runtime needs one requantization and a ``2^b``-entry lookup table per layer.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from models.networks.frozen_config import FrozenConfig, check, is_real

FULL_PRECISION_BITS = 32
SCALE_RULES = ("maxabs", "sawb")
_EPS = 1e-12  # scale floor for all-zero channels (their codes are 0 anyway)


@dataclasses.dataclass(frozen=True)
class LevelGrid:
    """The membrane levels ``lb, lb+step, ..., ub`` in units of the threshold θ; 0 is always a level.

    A level is stored as its integer *code* ``level / step`` (so the fresh and reset state is code 0), which must
    fit in int8. Ternary ``(-1, 1, 1)`` is the default; ``(-2, 1, 1)`` is 2-bit, ``(-2, 1, 0.25)`` a grid finer
    than θ.
    """

    lb: float = -1.0
    ub: float = 1.0
    step: float = 1.0

    def __post_init__(self) -> None:
        check(is_real(self.step) and math.isfinite(self.step) and self.step > 0,
              f"membrane grid step must be a positive number, got {self.step!r}")
        check(is_real(self.lb) and is_real(self.ub) and math.isfinite(self.lb) and math.isfinite(self.ub),
              f"membrane grid bounds must be finite numbers, got lb={self.lb!r}, ub={self.ub!r}")
        check(self.lb <= 0 <= self.ub and self.lb < self.ub,
              f"membrane grid needs lb <= 0 <= ub and lb < ub (0 is the reset level), got lb={self.lb}, ub={self.ub}")
        for name, bound in (("lb", self.lb), ("ub", self.ub)):
            ratio = bound / self.step
            check(abs(ratio - round(ratio)) < 1e-9,
                  f"membrane grid {name}={bound} is not a multiple of step={self.step}")
        check(self.code_min >= -128 and self.code_max <= 127,
              f"membrane grid codes [{self.code_min}, {self.code_max}] do not fit in int8; use a coarser step")

    @property
    def code_min(self) -> int:
        """Integer code of ``lb``."""
        return round(self.lb / self.step)

    @property
    def code_max(self) -> int:
        """Integer code of ``ub``."""
        return round(self.ub / self.step)

    @property
    def num_levels(self) -> int:
        """Number of levels (3 for ternary)."""
        return self.code_max - self.code_min + 1

    @property
    def bits(self) -> int:
        """Bits per neuron when packed (2 for ternary, 1.58 rounded up)."""
        return max(1, math.ceil(math.log2(self.num_levels)))

    def levels(self) -> list[float]:
        """Every level, ascending."""
        return [code * self.step for code in range(self.code_min, self.code_max + 1)]

    def boundaries(self) -> list[float]:
        """The rounding boundaries between adjacent levels (midpoints), ascending."""
        return [(code + 0.5) * self.step for code in range(self.code_min, self.code_max)]

    def codes(self, u: Tensor) -> Tensor:
        """Nearest-level codes of ``u`` as floats: ``floor(clamp(u, lb, ub)/step + 0.5)``, ties round up.

        Round-half-up is what an integer datapath does (add half, shift), so the exporter can match it exactly.
        """
        x = u.clamp(self.lb, self.ub)
        if self.step != 1.0:  # dividing by 1 is exact: skipping it keeps the result bit-identical
            x = x / self.step
        return torch.floor(x + 0.5)

    def packed_nbytes(self, numel: int) -> int:
        """Bytes to store ``numel`` neuron states packed at :attr:`bits` per neuron."""
        return math.ceil(numel * self.bits / 8)


@dataclasses.dataclass(frozen=True)
class QuantConfig(FrozenConfig):
    """Weight quantization of one block: ``weight_bits`` in 2..8 (2 = ternary) or 32 (full precision).

    ``ternary_threshold`` is TWN's ``t`` in ``|w| > t·mean|w|`` (only used at 2 bits); ``scale_rule`` is how the
    per-channel scale is set at 3..8 bits: ``maxabs`` or ``sawb`` (see the module docstring).
    """

    weight_bits: int = 4
    ternary_threshold: float = 0.7
    scale_rule: str = "maxabs"

    def __post_init__(self) -> None:
        check(isinstance(self.weight_bits, int) and not isinstance(self.weight_bits, bool)
              and (2 <= self.weight_bits <= 8 or self.weight_bits == FULL_PRECISION_BITS),
              f"QuantConfig.weight_bits must be an int in 2..8 or 32 (full precision), got {self.weight_bits!r}")
        check(is_real(self.ternary_threshold) and 0 <= self.ternary_threshold < 2,
              f"QuantConfig.ternary_threshold must be a number in [0, 2), got {self.ternary_threshold!r}")
        check(self.scale_rule in SCALE_RULES,
              f"QuantConfig.scale_rule must be one of {SCALE_RULES}, got {self.scale_rule!r}")

    @property
    def full_precision(self) -> bool:
        """True when weights are not quantized."""
        return self.weight_bits == FULL_PRECISION_BITS


def _codes_and_scale(weight: Tensor, config: QuantConfig) -> tuple[Tensor, Tensor]:
    """Float integer codes (shape of ``weight``) and per-output-channel scales ``[C_out]``."""
    flat = weight.detach().flatten(1).abs()  # [C_out, fan_in]
    if config.weight_bits == 2:
        delta = config.ternary_threshold * flat.mean(dim=1, keepdim=True)  # [C_out, 1]
        kept = flat > delta
        scale = (flat * kept).sum(dim=1) / kept.sum(dim=1).clamp(min=1)
        codes = torch.sign(weight.detach()) * kept.view_as(weight)
    else:
        top = 2 ** (config.weight_bits - 1) - 1
        clip = 2 * flat.mean(dim=1) if config.scale_rule == "sawb" else flat.amax(dim=1)  # [C_out]
        scale = clip / top
        codes = torch.round(weight.detach() / _per_channel(scale.clamp(min=_EPS), weight)).clamp(-top, top)
    return codes, scale.clamp(min=_EPS)


def _per_channel(scale: Tensor, weight: Tensor) -> Tensor:
    """Reshape ``[C_out]`` scales to broadcast against ``weight`` (``[C_out, 1, 1, 1]`` for a conv)."""
    return scale.view(-1, *([1] * (weight.dim() - 1)))


def weight_codes(weight: Tensor, config: QuantConfig) -> tuple[Tensor, Tensor]:
    """Integer weights (int8, shape of ``weight``) and float scales ``[C_out]``: ``fake_quant = codes * scale``."""
    check(not config.full_precision, "weight_codes needs quantized weights, got weight_bits=32")
    codes, scale = _codes_and_scale(weight, config)
    return codes.to(torch.int8), scale


def fake_quant_weight(weight: Tensor, config: QuantConfig) -> Tensor:
    """Quantize-dequantize ``weight`` per output channel; the backward is the identity (straight-through)."""
    if config.full_precision:
        return weight
    codes, scale = _codes_and_scale(weight, config)
    quantized = codes * _per_channel(scale, weight)
    return weight + (quantized - weight).detach()


class QuantConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weight is fake-quantized per output channel on every forward (see :class:`QuantConfig`)."""

    def __init__(self, *args: object, quant: QuantConfig | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.quant = quant if quant is not None else QuantConfig()

    def quantized_weight(self) -> Tensor:
        """The weight the forward uses (fake-quantized, or the raw weight at 32 bits)."""
        return fake_quant_weight(self.weight, self.quant)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight_bits={self.quant.weight_bits}"


def fake_quant_activation(x: Tensor, scale: Tensor, top: int) -> Tensor:
    """``x`` on the grid ``scale·{-top..top}``: ``floor(x/scale + 1/2)`` clamped (round half up, as an integer datapath
    adds half and shifts); the backward passes the gradient inside the range and stops it where the value clips."""
    codes = torch.floor(x / scale + 0.5).clamp(-top, top)
    inside = (x.abs() <= (top + 0.5) * scale).to(x.dtype)
    return x * inside + (codes * scale - x * inside).detach()


class QuantSiLU(nn.Module):
    """SiLU between two ``bits``-bit activation quantizers on one per-tensor ``scale``: ``q(SiLU(q(z)))``.

    The input quantizer makes the pre-activation a small integer code, so an integer runtime evaluates SiLU as a
    lookup table of ``2^bits`` entries; the output quantizer makes the next conv's input an integer. ``scale`` is
    calibrated in training as an exponential moving average of ``max|z| / top`` (``momentum``); a module that has
    never seen data (scale 0) calibrates on its first input, in any mode.
    """

    def __init__(self, bits: int = 8, momentum: float = 0.01) -> None:
        super().__init__()
        check(isinstance(bits, int) and 2 <= bits <= 8, f"activation bits must be an int in 2..8, got {bits!r}")
        self.bits, self.top, self.momentum = bits, 2 ** (bits - 1) - 1, momentum
        self.register_buffer("scale", torch.zeros(()))

    def forward(self, z: Tensor) -> Tensor:
        if self.training or self.scale.item() == 0:
            with torch.no_grad():
                observed = z.detach().abs().amax().float() / self.top
                first = self.scale == 0
                self.scale.copy_(torch.where(first, observed, torch.lerp(self.scale, observed, self.momentum)))
        scale = self.scale.clamp(min=_EPS).to(z.dtype)
        return fake_quant_activation(nn.functional.silu(fake_quant_activation(z, scale, self.top)), scale, self.top)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
