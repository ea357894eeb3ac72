"""Training configuration: the commented defaults in ``app/cfg/default.yaml``, a YAML file and ``key=value`` overrides.

Unknown keys are rejected and every value is checked against the type of its default, so a typo never silently
trains the wrong model.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from data.augment import SensorAugmentation

DEFAULT_CONFIG = Path(__file__).resolve().parent / "cfg" / "default.yaml"


# The quantization keys default to null (the detector's default, or the init= model's value), so they are checked here.
QUANTIZATION_CHOICES: dict[str, tuple[Any, ...]] = {
    "weight_bits": (2, 3, 4, 5, 6, 7, 8),
    "head_bits": (2, 3, 4, 5, 6, 7, 8, 32),
    "head_act_bits": (0, 2, 3, 4, 5, 6, 7, 8),
    "weight_quantizer": ("maxabs", "sawb"),
}


class ConfigError(ValueError):
    """A configuration key or value that cannot be used."""


def load_defaults() -> dict[str, Any]:
    """The defaults as a plain dict."""
    return yaml.safe_load(DEFAULT_CONFIG.read_text())


def _coerce(key: str, value: Any, default: Any) -> Any:
    if value is None or default is None:
        return value
    if isinstance(value, str) and isinstance(default, int | float) and not isinstance(default, bool):
        try:  # YAML 1.1 reads "1e-3" as a string
            value = float(value)
        except ValueError:
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if isinstance(default, int) and not isinstance(value, bool):
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if isinstance(default, float) and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, str) and isinstance(value, str):
        return value
    raise ConfigError(f"{key} must be a {type(default).__name__}, got {value!r}")


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["epochs=3", "data=/x"]`` → ``{"epochs": 3, "data": "/x"}`` (values parsed as YAML scalars)."""
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected key=value, got {pair!r}")
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    return out


def build_config(
    path: str | os.PathLike[str] | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Defaults, then the YAML file at ``path``, then ``overrides``; validated."""
    config = load_defaults()
    layers = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of key: value")
        layers.append(loaded)
    layers.append(dict(overrides or {}))
    for layer in layers:
        unknown = sorted(set(layer) - set(config))
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)} (see {DEFAULT_CONFIG.name})")
        for key, value in layer.items():
            config[key] = _coerce(key, value, load_defaults()[key])
    _validate(config)
    return config


def _validate(config: Mapping[str, Any]) -> None:
    if config["variant"] not in ("spquant", "baseline"):
        raise ConfigError(f"variant must be spquant or baseline, got {config['variant']!r}")
    positive = ("window_us", "bins", "cutoff", "input_width", "input_height", "epochs", "batch", "seq_len", "max_det")
    for key in positive:
        if config[key] <= 0:
            raise ConfigError(f"{key} must be positive, got {config[key]}")
    if config["lr"] <= 0:
        raise ConfigError(f"lr must be positive, got {config['lr']}")
    if not 0 < config["train_max_box_width"] <= 1:
        raise ConfigError(f"train_max_box_width must lie in (0, 1], got {config['train_max_box_width']}")
    if config["workers"] < 0:
        raise ConfigError(f"workers must be >= 0, got {config['workers']}")
    if config["amp"] not in ("none", "bf16", "fp16"):
        raise ConfigError(f"amp must be none, bf16 or fp16, got {config['amp']!r}")
    if config["lif"] not in ("fused", "reference"):
        raise ConfigError(f"lif must be fused or reference, got {config['lif']!r}")
    for key, allowed in QUANTIZATION_CHOICES.items():
        if config[key] is not None and (config[key] not in allowed or isinstance(config[key], bool)):
            raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))} (or null), got {config[key]!r}")
    if not 0 < config["mask_mass"] <= 1:
        raise ConfigError(f"mask_mass must lie in (0, 1], got {config['mask_mass']}")
    if not 0 <= config["mask_budget"] <= 1:
        raise ConfigError(f"mask_budget must lie in [0, 1], got {config['mask_budget']}")
    for key in ("mask_gain", "mask_budget_gain", "mask_lr_gain", "activity_gain"):
        if config[key] < 0:
            raise ConfigError(f"{key} must be >= 0, got {config[key]}")
    if not 0 <= config["ema_decay"] < 1:
        raise ConfigError(f"ema_decay must lie in [0, 1), got {config['ema_decay']}")
    try:
        sensor = sensor_augmentation(config)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if sensor.enabled and importlib.util.find_spec("tonic") is None:
        raise ConfigError("refractory_us, drop_event, time_jitter_us and uniform_noise_hz need tonic, which this "
                          "install lacks (pip install 'spquant[events]')")


def sensor_augmentation(config: Mapping[str, Any]) -> SensorAugmentation:
    """The sensor imperfections a training config asks for (its keys are the dataclass's fields)."""
    return SensorAugmentation(config["refractory_us"], config["drop_event"], config["time_jitter_us"],
                              config["uniform_noise_hz"])
