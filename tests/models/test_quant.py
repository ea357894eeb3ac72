"""Weight fake-quant (per output channel, symmetric, STE), the membrane level grid, and their configs."""

from __future__ import annotations

import itertools

import pytest
import torch

from models.networks.quant import (
    LevelGrid,
    QuantConfig,
    QuantConv2d,
    QuantSiLU,
    fake_quant_activation,
    fake_quant_weight,
    weight_codes,
)


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_multibit_codes_are_symmetric_per_channel_and_reconstruct(bits: int) -> None:
    torch.manual_seed(0)
    weight = torch.randn(6, 3, 3, 3) * torch.logspace(-2, 1, 6).view(6, 1, 1, 1)  # channels of very different scale
    config = QuantConfig(weight_bits=bits)
    codes, scale = weight_codes(weight, config)
    top = 2 ** (bits - 1) - 1
    assert codes.dtype == torch.int8 and codes.shape == weight.shape and scale.shape == (6,)
    assert codes.abs().amax(dim=(1, 2, 3)).tolist() == [top] * 6  # every channel uses its full range
    assert torch.allclose(scale, weight.abs().amax(dim=(1, 2, 3)) / top)
    fake = fake_quant_weight(weight, config)
    assert torch.equal(fake, codes.float() * scale.view(6, 1, 1, 1))
    assert ((fake - weight).abs() <= scale.view(6, 1, 1, 1) / 2 + 1e-6).all()  # error at most half a step


def test_ternary_is_twn_per_channel() -> None:
    torch.manual_seed(1)
    weight = torch.randn(4, 8, 3, 3)
    config = QuantConfig(weight_bits=2)
    codes, scale = weight_codes(weight, config)
    assert set(codes.unique().tolist()) <= {-1, 0, 1}
    flat = weight.flatten(1)
    kept = flat.abs() > 0.7 * flat.abs().mean(dim=1, keepdim=True)
    assert torch.equal(codes.flatten(1).abs().bool(), kept)
    assert torch.allclose(scale, (flat.abs() * kept).sum(1) / kept.sum(1))
    assert torch.equal(torch.sign(codes.flatten(1)[kept].float()), torch.sign(flat[kept]))


def test_fake_quant_backward_is_straight_through() -> None:
    for bits in (2, 4, 8):
        weight = torch.randn(5, 4, 3, 3, requires_grad=True)
        upstream = torch.randn(5, 4, 3, 3)
        (fake_quant_weight(weight, QuantConfig(weight_bits=bits)) * upstream).sum().backward()
        assert torch.equal(weight.grad, upstream)


def test_full_precision_is_identity_and_has_no_codes() -> None:
    weight = torch.randn(3, 2, 1, 1)
    config = QuantConfig(weight_bits=32)
    assert config.full_precision
    assert fake_quant_weight(weight, config) is weight
    with pytest.raises(ValueError, match="weight_bits=32"):
        weight_codes(weight, config)


def test_zero_channel_stays_zero_and_finite() -> None:
    weight = torch.randn(3, 2, 3, 3)
    weight[1] = 0
    for bits in (2, 4):
        fake = fake_quant_weight(weight, QuantConfig(weight_bits=bits))
        assert torch.isfinite(fake).all() and (fake[1] == 0).all()


def test_quant_conv_uses_fake_quant_weight() -> None:
    torch.manual_seed(2)
    conv = QuantConv2d(2, 4, 3, padding=1, bias=False, quant=QuantConfig(weight_bits=4))
    x = torch.randn(1, 2, 5, 5)
    expected = torch.nn.functional.conv2d(x, fake_quant_weight(conv.weight, conv.quant), padding=1)
    assert torch.allclose(conv(x), expected)
    assert "weight_bits=4" in repr(conv)
    assert QuantConv2d(1, 1, 1).quant == QuantConfig()  # 4 bits by default


@pytest.mark.parametrize("bad", [{"weight_bits": 1}, {"weight_bits": 9}, {"weight_bits": 16}, {"weight_bits": 4.0},
                                 {"weight_bits": True}, {"ternary_threshold": -0.1}, {"ternary_threshold": "0.7"}])
def test_bad_quant_config_raises(bad: dict) -> None:
    with pytest.raises(ValueError, match="QuantConfig"):
        QuantConfig(**bad)


def test_quant_config_dict_round_trip_rejects_unknown_keys() -> None:
    config = QuantConfig(weight_bits=8, ternary_threshold=0.5)
    assert QuantConfig.from_dict(config.to_dict()) == config
    assert QuantConfig.from_dict({}) == QuantConfig()
    with pytest.raises(ValueError, match=r"unknown QuantConfig keys \['act_bits'\]"):
        QuantConfig.from_dict({"weight_bits": 4, "act_bits": 8})
    with pytest.raises(ValueError, match="expects a mapping"):
        QuantConfig.from_dict([("weight_bits", 4)])


@pytest.mark.parametrize(("grid", "levels", "bits"), [
    (LevelGrid(-1, 1, 1), [-1, 0, 1], 2),
    (LevelGrid(-2, 1, 1), [-2, -1, 0, 1], 2),
    (LevelGrid(-3, 1, 1), [-3, -2, -1, 0, 1], 3),
    (LevelGrid(-1, 1, 0.5), [-1, -0.5, 0, 0.5, 1], 3),
    (LevelGrid(-2, 1, 0.125), [x / 8 for x in range(-16, 9)], 5),  # the authors' "tapeout" grid: 25 levels
])
def test_level_grid(grid: LevelGrid, levels: list[float], bits: int) -> None:
    assert grid.levels() == levels
    assert grid.boundaries() == [(a + b) / 2 for a, b in itertools.pairwise(levels)]
    assert grid.num_levels == len(levels) and grid.bits == bits
    assert grid.packed_nbytes(1_000_000) == 1_000_000 * bits // 8
    codes = grid.codes(torch.tensor(levels))
    assert codes.tolist() == list(range(grid.code_min, grid.code_max + 1))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"lb": 0.5}, "lb <= 0 <= ub"),
    ({"ub": -0.5, "lb": -1}, "lb <= 0 <= ub"),
    ({"lb": 0, "ub": 0}, "lb < ub"),
    ({"step": 0}, "positive"),
    ({"step": float("nan")}, "positive"),
    ({"lb": -1, "ub": 1, "step": 0.3}, "not a multiple"),
    ({"lb": float("-inf")}, "finite"),
    ({"lb": -2, "ub": 1, "step": 1 / 128}, "int8"),
])
def test_bad_level_grid_raises(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LevelGrid(**kwargs)


def test_sawb_clips_at_twice_the_mean_magnitude() -> None:
    torch.manual_seed(2)
    weight = torch.randn(5, 4, 3, 3)
    weight[0, 0, 0, 0] = 50.0  # one outlier: max-abs would waste the grid on it, SAWB clips it
    config = QuantConfig(weight_bits=4, scale_rule="sawb")
    codes, scale = weight_codes(weight, config)
    assert torch.allclose(scale, 2 * weight.abs().mean(dim=(1, 2, 3)) / 7)
    assert codes[0, 0, 0, 0] == 7 and codes.abs().max() == 7
    maxabs_scale = weight_codes(weight, QuantConfig(weight_bits=4))[1]
    assert scale[0] < maxabs_scale[0] / 5
    # ternary ignores the rule: TWN either way
    assert torch.equal(weight_codes(weight, QuantConfig(weight_bits=2, scale_rule="sawb"))[0],
                       weight_codes(weight, QuantConfig(weight_bits=2))[0])
    with pytest.raises(ValueError, match="scale_rule"):
        QuantConfig(scale_rule="lsq")


def test_activation_fake_quant_rounds_half_up_and_clips_the_gradient() -> None:
    scale = torch.tensor(0.5)
    x = torch.tensor([-100.0, -0.25, 0.25, 0.74, 0.75, 100.0], requires_grad=True)
    y = fake_quant_activation(x, scale, 3)
    assert y.tolist() == [-1.5, 0.0, 0.5, 0.5, 1.0, 1.5]  # -0.25/0.5 + 0.5 = 0 → code 0; 0.25 → code 1
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_quant_silu_calibrates_then_holds_its_scale_in_eval() -> None:
    torch.manual_seed(3)
    act = QuantSiLU(8)
    assert act.scale.item() == 0
    z = torch.randn(2, 4, 5, 5) * 3
    y = act(z)  # first input, in train mode: scale = max|z| / 127
    assert torch.isclose(act.scale, z.abs().max() / 127)
    codes = y / act.scale
    assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.abs().max() <= 127
    assert (y - torch.nn.functional.silu(z)).abs().max() <= act.scale * 1.01 + 1e-6  # about a step from SiLU
    act.train()
    act(z * 2)
    moved = act.scale.item()
    assert z.abs().max().item() / 127 < moved < 2 * z.abs().max().item() / 127  # a moving average, not a jump
    act.eval()
    act(z * 10)
    assert act.scale.item() == moved
    fresh = QuantSiLU(4).eval()
    fresh(z)  # never calibrated: calibrates once even in eval
    assert torch.isclose(fresh.scale, z.abs().max() / 7)
    with pytest.raises(ValueError, match="activation bits"):
        QuantSiLU(1)
