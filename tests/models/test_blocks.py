"""Spiking blocks: shapes, state, step modes, integer inference, full-precision mode, gradients."""

from __future__ import annotations

import pytest
import torch

from models.networks.blocks import ConvBN, MSResidualBlock, SpikingConvBlock
from models.networks.graph import Graph, ModuleOps, Node
from models.networks.neuron import NeuronConfig
from models.networks.quant import QuantConfig

FP32 = {"neuron": NeuronConfig(quantize_membrane=False), "quant": QuantConfig(weight_bits=32)}


def _randomise_bn(module: torch.nn.Module) -> None:
    """Non-trivial running statistics, so that eval-mode checks are not vacuous."""
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.2, 0.6)


def _blocks() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "conv": SpikingConvBlock(2, 4, stride=2),
        "conv-per-channel-2bit": SpikingConvBlock(2, 4, neuron=NeuronConfig(lb=-2, ub=1, per_channel_threshold=True),
                                                  quant=QuantConfig(weight_bits=2)),
        "ms-identity": MSResidualBlock(2, 2),
        "ms-project": MSResidualBlock(2, 4, stride=2, neuron=NeuronConfig(step=0.5), quant=QuantConfig(weight_bits=8)),
    }


def _run_steps(block: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, object]:
    outs, state = [], None
    for t in range(x.shape[0]):
        y, state = block(x[t], state)
        outs.append(y)
    return torch.stack(outs), state


def test_conv_bn_folds_time_into_batch() -> None:
    layer = ConvBN(3, 5, kernel_size=3, stride=2).eval()
    x = torch.randn(4, 2, 3, 9, 8)
    y = layer(x)
    assert y.shape == (4, 2, 5, 5, 4)
    assert torch.allclose(y[1], layer(x[1]), atol=1e-6)
    assert torch.equal(layer(x.bool()), layer(x.bool().float()))  # bool spikes from int8 inference
    with pytest.raises(ValueError, match="ConvBN expects"):
        layer(torch.randn(3, 9, 8))


def test_spiking_conv_block_shapes_and_spikes() -> None:
    block = SpikingConvBlock(2, 4, stride=2)
    spikes, state = block(torch.rand(5, 3, 2, 8, 10) * 3)
    assert spikes.shape == (5, 3, 4, 4, 5) and state.shape == (3, 4, 4, 5)
    assert set(spikes.unique().tolist()) <= {0.0, 1.0} and spikes.any()
    assert set(state.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert block.conv_bn.conv.quant.weight_bits == 4 and block.lif.config == NeuronConfig()


@pytest.mark.parametrize("name", list(_blocks()))
def test_multi_step_equals_single_steps_in_eval(name: str) -> None:
    block = _blocks()[name].eval()
    _randomise_bn(block)
    x = torch.randn(5, 2, 2, 8, 8) * 2
    y, state = block(x)
    y_steps, state_steps = _run_steps(block, x)
    assert y.shape == y_steps.shape and torch.allclose(y, y_steps, atol=1e-5)
    if isinstance(state, dict):
        assert state.keys() == state_steps.keys() == {"lif1", "lif2"}
        assert all(torch.equal(state[k], state_steps[k]) for k in state)
    else:
        assert torch.equal(state, state_steps)


def test_ms_block_nodes_compose_into_a_larger_graph() -> None:
    """The block's own nodes, renamed, run inside another graph give what the block's forward gives."""
    block = MSResidualBlock(4, 8, stride=2, quant=QuantConfig(weight_bits=4)).eval()
    _randomise_bn(block)
    nodes = block.nodes("outer.", "x", mid_group="mid", out_group="out")
    assert [n.name for n in nodes] == ["outer.lif1", "outer.conv1", "outer.lif2", "outer.conv2", "outer.shortcut",
                                       "outer.add"]
    graph = Graph([Node("x", "input"), *nodes])
    assert graph.state_names == ["outer.lif1", "outer.lif2"]
    assert graph.group("outer.add") == "out" and graph.group("outer.lif2") == "mid"
    x = torch.randn(3, 2, 4, 8, 8) * 2
    with torch.no_grad():
        y, state = block(x)
        y_graph, state_graph = graph.run(ModuleOps(), x)
    assert torch.equal(y, y_graph)
    assert all(torch.equal(state[k], state_graph[f"outer.{k}"]) for k in state)


def test_ms_block_shortcuts_and_state() -> None:
    identity, project = MSResidualBlock(4, 4), MSResidualBlock(4, 8, stride=2)
    assert identity.shortcut is None and project.shortcut is not None
    x = torch.randn(3, 2, 4, 8, 8)
    y, state = project(x)
    assert y.shape == (3, 2, 8, 4, 4)
    assert state["lif1"].shape == (2, 4, 8, 8) and state["lif2"].shape == (2, 8, 4, 4)
    # With silent branches the identity block passes its input through unchanged (the membrane shortcut).
    with torch.no_grad():
        identity.conv2.bn.weight.zero_()
        identity.conv2.bn.bias.zero_()
    assert torch.equal(identity(x)[0], x)


def test_ms_block_rejects_bad_state() -> None:
    block = MSResidualBlock(2, 2)
    x = torch.randn(2, 1, 2, 4, 4)
    with pytest.raises(ValueError, match="keys"):
        block(x, {"lif1": None})
    with pytest.raises(ValueError, match="keys"):
        block(x, torch.zeros(1, 2, 4, 4))
    _, state = block(x)
    with pytest.raises(ValueError, match="state shape"):
        block(torch.randn(2, 3, 2, 4, 4), state)  # a state from a batch of 1 fed a batch of 3


@pytest.mark.parametrize("name", list(_blocks()))
def test_gradients_reach_weights_bn_and_thresholds(name: str) -> None:
    block = _blocks()[name]
    y, _ = block(torch.randn(4, 2, 2, 8, 8) * 2)
    (y.float() * torch.randn_like(y.float())).sum().backward()
    for param_name, param in block.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name
        assert param.grad.abs().sum() > 0, param_name


def test_full_precision_mode_uses_the_same_classes() -> None:
    torch.manual_seed(1)
    block = SpikingConvBlock(2, 4, **FP32)
    weight = block.conv_bn.conv.weight
    assert torch.equal(block.conv_bn.conv.quantized_weight(), weight)
    _, state = block(torch.randn(4, 2, 2, 6, 6) * 2)
    assert not torch.isin(state, torch.tensor([-1.0, 0.0, 1.0])).all()  # float membrane, off the grid
    quantized = SpikingConvBlock(2, 4)
    assert len(quantized.conv_bn.conv.quantized_weight()[0].unique()) <= 15  # 4-bit: at most 15 values per channel
    ms = MSResidualBlock(2, 4, stride=2, **FP32)
    assert all(not m.config.quantize_membrane for m in (ms.lif1, ms.lif2))
    assert all(c.conv.quant.full_precision for c in (ms.conv1, ms.conv2, ms.shortcut))
