"""Explicit network state: a value the caller owns, never module memory.

A neuron's state is one tensor ``[B, C, H, W]`` (float membrane in θ units when training, int8 level codes in
integer inference); a block's or a network's state nests them in dicts keyed by layer name. ``None`` means
"fresh" (zeros, created on first use). The helpers here work on any such nesting and never modify their input.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

State = Tensor | dict[str, "State"] | None


def _map(state: State, fn: Callable[[Tensor], Tensor]) -> State:
    if state is None:
        return None
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, dict):
        return {name: _map(sub, fn) for name, sub in state.items()}
    raise TypeError(f"state must be a tensor, a dict of states or None, got {type(state).__name__}")


def detach_state(state: State) -> State:
    """Cut the autograd graph at a chunk boundary (truncated BPTT); values are shared, not copied."""
    return _map(state, Tensor.detach)


def reset_state(state: State, mask: Tensor) -> State:
    """Zero the state of samples where ``mask`` (bool ``[B]``) is True, e.g. the first window of a new stream."""
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() != 1:
        raise ValueError(f"reset mask must be a 1-D bool tensor [B], got {getattr(mask, 'shape', mask)!r}")

    def reset(tensor: Tensor) -> Tensor:
        if tensor.dim() == 0 or tensor.shape[0] != mask.shape[0]:
            raise ValueError(f"reset mask has {mask.shape[0]} samples, a state tensor has shape {tuple(tensor.shape)}")
        return tensor.masked_fill(mask.to(tensor.device).view(-1, *([1] * (tensor.dim() - 1))), 0)  # [B, 1, 1, 1]

    return _map(state, reset)


def state_nbytes(state: State) -> int:
    """Bytes held by every tensor in ``state`` (as stored, not packed)."""
    if state is None:
        return 0
    if isinstance(state, Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_nbytes(sub) for sub in state.values())
    raise TypeError(f"state must be a tensor, a dict of states or None, got {type(state).__name__}")
