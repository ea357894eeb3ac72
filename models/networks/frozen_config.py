"""Frozen configuration dataclasses with a strict dict round trip (for checkpoints and config files)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Self


@dataclasses.dataclass(frozen=True)
class FrozenConfig:
    """Base for frozen config dataclasses: ``to_dict`` / ``from_dict``; subclasses validate in ``__post_init__``."""

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of every field (JSON- and YAML-friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Build from a dict; missing keys take their defaults, unknown keys raise ``ValueError``."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__}.from_dict expects a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)


def check(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition`` holds (config validation)."""
    if not condition:
        raise ValueError(message)


def is_real(value: Any) -> bool:
    """True for int and float values, False for bool (a bool is never a valid number in a config)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def sensor_size(sensor_width: int, sensor_height: int, input_width: int, input_height: int) -> tuple[int, int]:
    """(width, height) of the sensor a model expects: the recorded one (both set), else its input size."""
    if sensor_width and sensor_height:
        return sensor_width, sensor_height
    return input_width, input_height
