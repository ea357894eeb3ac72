"""Explicit network state: a value the caller owns, never module memory.

A neuron's state is one tensor ``[B, C, H, W]`` (float membrane in θ units when training, int8 level codes in
integer inference); a block's or a network's state nests them in dicts keyed by layer name. ``None`` means
"fresh" (zeros, created on first use). The helpers here work on any such nesting and never modify their input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

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


def stack_states(states: Sequence[State]) -> State:
    """One batched state from per-stream states (concatenated along the batch dimension, in order).

    ``None`` entries (fresh streams) become zeros shaped like the others; all ``None`` gives ``None``.
    """
    known = next((s for s in states if s is not None), None)
    if known is None:
        return None
    parts = [_map(known, torch.zeros_like) if s is None else s for s in states]
    return _concat(parts)


def _concat(parts: Sequence[State]) -> State:
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(parts, dim=0)  # type: ignore[arg-type]
    if isinstance(first, dict):
        if any(not isinstance(p, dict) or p.keys() != first.keys() for p in parts):
            raise ValueError("states to stack must come from the same model (different layer names)")
        return {name: _concat([p[name] for p in parts]) for name in first}  # type: ignore[index]
    raise TypeError(f"state must be a tensor, a dict of states or None, got {type(first).__name__}")


def split_state(state: State, sizes: Sequence[int]) -> list[State]:
    """Undo :func:`stack_states`: per-stream states with ``sizes`` samples each.

    The parts are copies, so a stream's state does not keep the whole batch's memory alive.
    """
    if state is None:
        return [None] * len(sizes)
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    return [_map(state, lambda t, a=a, b=b: t[a:b].clone()) for a, b in pairwise(offsets)]
